"""The course's packet generator (课后作业: 基于 dpdk 的发包工具) on hpnlab.dpdk.

    templates  the traffic: UDP / TCP SYN / ICMP frames, sizes, IMIX, flows
    engine     the C generator and receiver, driven a time slice at a time
    agent      one measurement a process on a lab host (EAL lives as long as the process)
    lab        the run across the lab's hosts, side by side with dpdk-testpmd, and the report
"""
