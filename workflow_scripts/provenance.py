from kitscascade import runlog
from kitscascade.provenance import write_provenance

runlog.start(snakemake.log[0])
p = snakemake.params
write_provenance(snakemake.output[0], snakemake.wildcards.experiment, p.config, p.shared)
