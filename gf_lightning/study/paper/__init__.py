"""The paper's figures: each figure of Ma, Mao & Shen (2024) as small sweeps (:mod:`.figures`, :mod:`.command`), the
Burgers PINN's figure (:mod:`.burgers`, :mod:`.burgers_command`) and the PINN race (:mod:`.race`,
:mod:`.race_command`)."""
