from kitscascade import runlog, steps

runlog.start(snakemake.log[0])
p = snakemake.params
steps.make_phantoms(p.out_dir, p.case_ids, p.unlabeled, p.cfg)
