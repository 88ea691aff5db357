from kitscascade import config, runlog, stage1

runlog.start(snakemake.log[0])
out = snakemake.output
stage1.predict_held_out(
    [
        {
            "npz": npz,
            "imaging": imaging,
            "segmentation": segmentation,
            "case_id": case,
            "mask": mask,
            "labels": labels,
            "info": info,
        }
        for npz, imaging, segmentation, case, mask, labels, info in zip(
            snakemake.input.npz,
            snakemake.input.imaging,
            snakemake.input.segmentation,
            snakemake.params.cases,
            out.mask,
            out.labels,
            out.info,
            strict=True,
        )
    ],
    snakemake.input.model,
    config.with_execution(snakemake.params.cfg, snakemake.config, "stage1"),
    snakemake.params.labels,
    threads=snakemake.threads,
)
