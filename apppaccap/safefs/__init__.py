"""Safe file operations at the filesystem boundary: the paths callers name.

The service runs as root, so every path a request names is checked and opened here:

- Confinement (roots.py): a path must lie below one of a list of root directories (the
  export or ingest roots of the server's command line). Symlinks are resolved first
  (realpath), then the file is opened by walking from the root one component at a time
  with O_NOFOLLOW, so what is opened is what was checked: a symlink swapped in after the
  check makes the open fail instead of escaping. Outside the roots the answer is one
  uniform INVALID_PERMISSIONS that says nothing about the file (exists or not, readable
  or not).
- Reading (reading.py): opens never block and refuse anything but a regular file
  (FIFOs, devices, directories, sockets) before a byte is read.
- Writing (writing.py): a temporary `.<name>.<random>.part` created with
  O_CREAT|O_EXCL|O_NOFOLLOW (mode 0600) in the target directory, written, fsynced, then
  renamed into place. Only a regular file is ever replaced, and only when the caller
  asked to overwrite; a symlink, device node, FIFO or directory target is refused, never
  replaced.
- The journal (journal.py): each temporary file is recorded in a journal directory
  while it exists, so start-up can remove the leftovers of an export interrupted by a
  crash or kill -9.
"""
