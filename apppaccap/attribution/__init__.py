"""Which process (and thread) owns a flow: socket tables (sock_diag), /proc, the proc
connector's exec/fork/exit events, this host's addresses, the resolver that the capture
pipelines ask, its fast-path helper process, and the book of processes (ProcessIds)."""
