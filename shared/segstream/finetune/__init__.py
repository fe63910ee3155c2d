"""Fine-tune the encoder on the platform's own behaviour, without labels.

Objectives (self-supervised, symmetric InfoNCE with in-batch negatives):

- ``contrastive``: a user's timeline is cut into consecutive, disjoint time windows; the
  feature texts of two neighbouring windows are a positive pair (``windows``);
- ``contrastive+category``: the same, plus an auxiliary head that predicts the next
  window's top category (it only shapes training and is not saved);
- ``cooccurrence``: item texts (title, category path); items the same users take together
  (one basket) or in a row are positives, sampled with a cap per user and popular items
  down-weighted (``items``), so the language model learns collaborative signal and a new
  item with only a title lands near the items it will be taken with (``check``).

Modules: ``windows`` and ``items`` build pairs, ``objectives`` the loss and masks,
``trainer`` the loop (full, last N layers, or LoRA; held-out early stopping), ``output``
the model directory (``encoding.Encoder`` loads it unchanged, with ``MODEL_CARD.md`` and
``training.json``), ``check`` the before/after co-occurrence measures.
"""

from segstream.finetune.check import catalog_for, cooccurrence_check
from segstream.finetune.config import EvalPoint, FinetuneConfig, FinetuneResult, Hooks, Objective
from segstream.finetune.items import (
    Item,
    ItemPair,
    ItemPairs,
    held_items,
    item_text,
    make_item_pairs,
    split_items,
)
from segstream.finetune.objectives import (
    _negatives_mask,
    info_nce,
    item_mask,
    negatives_mask,
    retrieval,
)
from segstream.finetune.output import model_card
from segstream.finetune.trainer import Trainer
from segstream.finetune.windows import Pair, make_pairs, split_users, window_text

__all__ = ["EvalPoint", "FinetuneConfig", "FinetuneResult", "Hooks", "Item", "ItemPair",
           "ItemPairs", "Objective", "Pair", "Trainer", "_negatives_mask", "catalog_for",
           "cooccurrence_check", "held_items", "info_nce", "item_mask", "item_text",
           "make_item_pairs", "make_pairs", "model_card", "negatives_mask", "retrieval",
           "split_items", "split_users", "window_text"]
