# Reliable UDP (course §2.2.2): hpnlab's KCP-format ARQ vs C ikcp vs TCP in KCP's test.cpp
# scenario (10 % loss, 60-125 ms RTT, an 8-byte message every 20 ms), over the lab's hosts.
#   make lab-rudp                     1000 messages per implementation and mode (~4 min)
#   make lab-rudp LAB_ARGS=--quick    200 messages
.PHONY: lab-rudp

lab-rudp: setup
	$(call run-lab,$(HPNLAB_ARGS),rudp,provision)
