"""The vision stage's parts that the stage and the experiments share: its typed configuration
(`config`), the encoder-plus-heads model (`model`), the losses (`losses`) and the finding metrics
(`metrics`). The stage itself is `training.stages.vision`."""
