"""The step-size sweep: a grid of points (:mod:`.grid`) run as processes (:mod:`.runner`) or a SLURM array
(:mod:`.slurm`), read back (:mod:`.records`), summarised (:mod:`.cells`) and reported (:mod:`.report`, :mod:`.figure`),
with gradient descent's stability limit (:mod:`.stability`); :mod:`.execute` runs a whole sweep, :mod:`.command` is its
command line, :mod:`.compare` sets several sweeps side by side (:mod:`.compare_command`)."""
