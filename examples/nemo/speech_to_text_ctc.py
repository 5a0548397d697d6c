"""Train a NeMo CTC model from a Hydra config, reporting each epoch's dev WER to speechtune.

This is NeMo's own ``examples/asr/asr_ctc/speech_to_text_ctc.py`` (``@hydra_runner``, a
Lightning ``Trainer`` from ``cfg.trainer``, ``EncDecCTCModel`` from ``cfg.model``) plus one small
Lightning callback that passes ``val_wer`` to ``speechtune.report`` after every validation and
ends training once the trial is pruned. Every config key can be overridden Hydra-style on the
command line, which is how the tuner passes a trial's values
(``model.optim.lr=0.0013 model.encoder.n_layers=2``)::

    python speech_to_text_ctc.py model.optim.lr=0.001 trainer.max_epochs=5

Run by hand (no tuner), ``speechtune.report`` does nothing; without speechtune installed the
callback is skipped. The stock NeMo script can be tuned unchanged too: see README.md.
"""

from __future__ import annotations

import lightning.pytorch as pl
from nemo.collections.asr.models import EncDecCTCModel
from nemo.core.config import hydra_runner
from nemo.utils import logging
from omegaconf import DictConfig, OmegaConf

try:
    import speechtune
except ImportError:  # run outside a speechtune environment: train without reporting
    speechtune = None


class SpeechtuneReport(pl.Callback):
    """After each validation, report ``val_wer``, ``val_loss`` and the learning rate for this epoch.

    Once the tuner has pruned the trial (``speechtune.should_stop()``: its stop file exists),
    training ends cleanly after the current epoch instead of being terminated.
    """

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or speechtune is None:
            return
        metrics = {
            name: float(trainer.callback_metrics[key])
            for name, key in (("wer", "val_wer"), ("loss", "val_loss"))
            if key in trainer.callback_metrics
        }
        if metrics:
            # the optimizer's own learning rate: shows that a tuned model.optim.lr took effect
            lr = float(trainer.optimizers[0].param_groups[0]["lr"])
            speechtune.report(epoch=trainer.current_epoch + 1, lr=lr, **metrics)
        if speechtune.should_stop():  # the tuner pruned this trial: end after this epoch
            logging.info(f"speechtune pruned this trial after epoch {trainer.current_epoch + 1}")
            trainer.should_stop = True


@hydra_runner(config_path="conf", config_name="ctc_tiny")
def main(cfg: DictConfig) -> None:
    """Build the trainer and the model from ``cfg`` and fit."""
    logging.info(f"Hydra config:\n{OmegaConf.to_yaml(cfg)}")
    pl.seed_everything(cfg.seed, workers=True)
    trainer = pl.Trainer(**cfg.trainer, callbacks=[SpeechtuneReport()])
    model = EncDecCTCModel(cfg=cfg.model, trainer=trainer)
    trainer.fit(model)


if __name__ == "__main__":
    main()
