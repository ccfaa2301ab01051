"""Fleet tools: signing releases, serving artifacts, pushing updates, fleet status."""
