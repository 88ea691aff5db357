from kitscascade import phantoms, runlog

runlog.start(snakemake.log[0])
cfg = snakemake.params.cfg
phantoms.write_phantoms(
    snakemake.params.cases,
    snakemake.output.metadata,
    shape=tuple(cfg["shape"]),
    spacing=tuple(cfg["spacing"]),
    seed=cfg["seed"],
    single_kidney_fraction=cfg["single_kidney_fraction"],
    slice_thickness_mm=cfg["slice_thickness_mm"],
    scan_length_mm=cfg["scan_length_mm"],
    family=cfg["family"],
)
