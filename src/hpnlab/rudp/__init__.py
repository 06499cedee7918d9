"""Reliable UDP (course §2.2.2): a KCP-format ARQ (`arq`), C ikcp behind the same face
(`ckcp`), a simulated lossy link (`sim`) and the lab that measures them (`lab`)."""
