"""State directories: the registry (all of the SQL), the run lock, and the operations on
whole states (status, merge, verify). Internal."""
