"""Names of the model's options, without torch: the command line's parser imports these, and
building it must not cost torch's import (seconds) to a participant call."""

#: The input signals a pathway can read (the BOLD series and its first-order temporal
#: difference), in the order pathways are listed.
SIGNALS = ("raw", "diff")
