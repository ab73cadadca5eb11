"""``--criterion srupp_adaptive_loss``: negative log-likelihood through the decoder's own head.

For the projected adaptive softmax the loss gathers only the target's cluster (no (B, T, V)
tensor); for the char-level Linear head it is ordinary cross-entropy. Losses are logged in base 2
like fairseq's ``cross_entropy`` / ``adaptive_loss`` (bits per token; ``ppl`` = 2**loss).

Some tail clusters may receive no target in a batch and hence no gradient: train with
``--ddp-backend legacy_ddp`` (as fairseq's own adaptive_loss), which all-reduces such gradients as
zeros.
"""
import math
from dataclasses import dataclass

import torch
from fairseq import metrics, utils
from fairseq.criterions import FairseqCriterion, register_criterion
from fairseq.dataclass import FairseqDataclass
from omegaconf import II

from fairseq_srupp.errors import SRUppUserError


@dataclass
class SRUppAdaptiveLossConfig(FairseqDataclass):
    sentence_avg: bool = II("optimization.sentence_avg")


@register_criterion("srupp_adaptive_loss", dataclass=SRUppAdaptiveLossConfig)
class SRUppAdaptiveLoss(FairseqCriterion):
    def __init__(self, task, sentence_avg: bool):
        super().__init__(task)
        self.sentence_avg = sentence_avg

    def forward(self, model, sample, reduce=True):
        decoder = getattr(model, "decoder", None)
        if not hasattr(decoder, "target_log_probs"):
            raise SRUppUserError(
                "--criterion srupp_adaptive_loss needs a srupp_lm model (its decoder computes target "
                "log-probabilities); got {}".format(type(model).__name__)
            )
        net_output = model(**sample["net_input"])
        target = model.get_targets(sample, net_output)  # (B, T)
        target_lprobs = decoder.target_log_probs(net_output, target)  # (B, T)
        keep = target.ne(self.padding_idx)
        nll = -(target_lprobs * keep)
        loss = nll.sum() if reduce else nll
        ntokens = sample["ntokens"]
        sample_size = target.size(0) if self.sentence_avg else ntokens
        logging_output = {
            "loss": loss.data if reduce else loss.sum().data,
            "ntokens": ntokens,
            "nsentences": target.size(0),
            "sample_size": sample_size,
        }
        return loss, sample_size, logging_output

    @staticmethod
    def reduce_metrics(logging_outputs) -> None:
        loss_sum = sum(log.get("loss", 0) for log in logging_outputs)
        ntokens = sum(log.get("ntokens", 0) for log in logging_outputs)
        sample_size = sum(log.get("sample_size", 0) for log in logging_outputs)
        metrics.log_scalar("loss", loss_sum / sample_size / math.log(2), sample_size, round=3)
        if sample_size != ntokens:
            metrics.log_scalar("nll_loss", loss_sum / ntokens / math.log(2), ntokens, round=3)
            metrics.log_derived("ppl", lambda meters: utils.get_perplexity(meters["nll_loss"].avg))
        else:
            metrics.log_derived("ppl", lambda meters: utils.get_perplexity(meters["loss"].avg))

    @staticmethod
    def logging_outputs_can_be_summed() -> bool:
        return True
