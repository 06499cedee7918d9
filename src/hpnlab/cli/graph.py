from __future__ import annotations

import math
from pathlib import Path

from ..errors import HpnlabError
from ..topology import Lab, load_lab
from ._common import console

HELP = "draw the topology (hosts, LANs, links, addresses) to a PNG or SVG file"


def add_arguments(parser) -> None:
    parser.add_argument("-o", "--output", default="results/topology.png",
                        help="output file; .png or .svg (default: results/topology.png)")


def run(args) -> int:
    lab = load_lab(args.lab, provider=args.provider)
    out = Path(args.output)
    if out.suffix.lower() not in (".png", ".svg"):
        raise HpnlabError(f"--output must end in .png or .svg, got {out.name!r}", hint="e.g. -o topology.png",
                          exit_code=2)
    draw(lab, out)
    console.print(f"wrote {out}")
    return 0


def draw(lab: Lab, out: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    hosts, lans = list(lab.hosts), [n for n in lab.networks.values() if n.kind == "lan"]
    pos = {}
    for i, h in enumerate(hosts):                      # hosts on an outer circle
        a = 2 * math.pi * i / max(len(hosts), 1) + math.pi / 2
        pos[h] = (math.cos(a), math.sin(a))
    for i, n in enumerate(lans):                       # LANs on an inner one (the centre if alone)
        r = 0 if len(lans) == 1 else 0.45
        a = 2 * math.pi * i / max(len(lans), 1)
        pos[f"lan:{n.name}"] = (r * math.cos(a), r * math.sin(a))

    size = 6 + len(hosts) / 8
    fig, ax = plt.subplots(figsize=(size, size))
    small = len(hosts) <= 12
    for net in lab.networks.values():
        impaired = f"\n{net.impair.describe()}" if net.impair else ""
        if net.kind == "lan":
            cx, cy = pos[f"lan:{net.name}"]
            for h in net.members:
                hx, hy = pos[h]
                ax.plot([cx, hx], [cy, hy], color="#4477aa", lw=1.2, zorder=1)
                if small:
                    nic = lab.hosts[h].nic(net.name)
                    ax.annotate(f"{nic.ifname} {nic.ip}", ((2 * hx + cx) / 3, (2 * hy + cy) / 3),
                                fontsize=7, ha="center", color="#224466")
            ax.scatter([cx], [cy], s=900, marker="s", color="#cce0ff", edgecolor="#4477aa", zorder=2)
            ax.annotate(f"{net.name}\n{net.subnet}{impaired}", (cx, cy), ha="center", va="center",
                        fontsize=8, zorder=3)
        else:
            (ax_, ay), (bx, by) = pos[net.members[0]], pos[net.members[1]]
            ax.plot([ax_, bx], [ay, by], color="#aa4455", lw=1.5, ls="--", zorder=1)
            ax.annotate(f"{net.name} {net.subnet}{impaired}", ((ax_ + bx) / 2, (ay + by) / 2),
                        fontsize=7, ha="center", color="#662233")
    for h in hosts:
        x, y = pos[h]
        spec = lab.hosts[h]
        ax.scatter([x], [y], s=1400 if small else 300, color="#ffe9b3", edgecolor="#aa7700", zorder=2)
        ax.annotate(f"{h}\n{spec.role}" if small else h, (x, y), ha="center", va="center",
                    fontsize=9 if small else 6, zorder=3)
    ax.set_title(f"lab {lab.name} — provider {lab.provider}: {len(hosts)} hosts, "
                 f"{len(lans)} LANs, {len(lab.networks) - len(lans)} links")
    ax.set_aspect("equal")
    ax.axis("off")
    ax.margins(0.15)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110, bbox_inches="tight")
    plt.close(fig)
