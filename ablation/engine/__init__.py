"""The computation: images, weights, network, losses, the transfer loop. No Hydra, OmegaConf or MLflow."""

#: Bump whenever the engine's numbers change for an unchanged config (a fixed formula, another rounding
#: order, a changed default inside the engine): sweep fingerprints include it, so old results are not reused.
ENGINE_VERSION = 1
