"""The reproduction of the seed's four experiments: plan (:mod:`.reproduction`), train (:mod:`.in_process` in this
process, :mod:`.workers` in worker processes), report (:mod:`.reports`, :mod:`.figures`) beside the seed's claims
(:mod:`.claims`); :mod:`.command` is its command line."""
