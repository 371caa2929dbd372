"""Session: the ``DefuseSession`` facade that holds one debugging session's state and runs its
steps (identify, distill, label, correct and revert, audit, save), telling its observers after
each change."""
