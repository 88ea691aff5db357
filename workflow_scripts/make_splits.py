from kitscascade import runlog, steps

runlog.start(snakemake.log[0])
p = snakemake.params
steps.write_splits(p.data_dir, p.case_ids, p.cfg, snakemake.output[0])
