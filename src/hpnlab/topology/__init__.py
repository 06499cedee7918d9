"""The lab topology: `load_lab("lab.yml")` gives the one validated model."""
from .loader import TopologyError, load_lab, parse_lab
from .model import PROVIDERS, Host, Impairment, Lab, Network, Nic

__all__ = ["PROVIDERS", "Host", "Impairment", "Lab", "Network", "Nic", "TopologyError", "load_lab", "parse_lab"]
