"""Correct: fine-tune the classifier on the labeled regions' samples in one round
(``round.run_round`` over a ``RoundInputs``), judged on a validation split (``selection``,
``statistics``, ``validation``) and evaluated (``evaluation``), with the weight snapshots that
make it revertible (``snapshots``)."""
