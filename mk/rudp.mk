# Reliable UDP (course §2.2.2): hpnlab's KCP-format ARQ vs C ikcp vs TCP in KCP's test.cpp
# scenario (10 % loss, 60-125 ms RTT, an 8-byte message every 20 ms), over the lab's hosts;
# then a 0-20 % loss sweep with QUIC, and UDP 并发 (one socket, SO_REUSEPORT, connected sockets).
#   make lab-rudp                     the full grid (~14 min on netns with --rounds 2)
#   make lab-rudp LAB_ARGS=--quick    200 messages, a short sweep
.PHONY: lab-rudp

lab-rudp: setup
	$(call run-lab,$(HPNLAB_ARGS),rudp,provision)
