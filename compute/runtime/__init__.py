"""Thread plumbing every layer uses: supervisor, retry policy, deadline-bound writer thread."""
