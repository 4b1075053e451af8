"""jaxrec.eval: full-ranking top-k evaluation on device, ranking and rating metrics.

Imports only jax, numpy and ``jaxrec.errors``; pairs are plain ``(n, 2)`` int numpy arrays.

- ``evaluate_split`` ranks every user that has held-out items against all (candidate) items,
  masks each user's known items, and averages recall/NDCG/precision/MAP/hit/MRR at each k
  (MMRec's definitions; hit and MRR RecBole's). ``prepare_split`` + ``evaluate_prepared`` split
  that into a one-off layout and a per-epoch device pass; ``evaluate_prepared_sharded`` is the
  same evaluation with the tables row-sharded over a device mesh (top-k per shard, merged;
  bit-identical).
- ``evaluate_protocol`` / ``prepare_protocol`` / ``protocol_pairs``: the MMRec protocol
  (mask training items) and the Cornac protocol (also mask validation items at test time).
- ``top_k_items``: the ranked lists themselves, for serving.
- Per-user metric functions on a hit matrix, and ``rmse`` / ``mae`` for rating models.
"""

# Whole-split evaluation.
from jaxrec.eval._evaluate import DEFAULT_KS as DEFAULT_KS
from jaxrec.eval._evaluate import DEFAULT_METRICS as DEFAULT_METRICS
from jaxrec.eval._evaluate import KNOWN_METRICS as KNOWN_METRICS
from jaxrec.eval._evaluate import EvalSplit as EvalSplit
from jaxrec.eval._evaluate import check_batch_size as check_batch_size
from jaxrec.eval._evaluate import evaluate_prepared as evaluate_prepared
from jaxrec.eval._ranking import masked_scores as masked_scores
from jaxrec.eval._evaluate import evaluate_prepared_many as evaluate_prepared_many
from jaxrec.eval._evaluate import evaluate_split as evaluate_split
from jaxrec.eval._evaluate import prepare_split as prepare_split
from jaxrec.eval._sharded import evaluate_prepared_sharded as evaluate_prepared_sharded

# Protocols.
from jaxrec.eval._protocols import PROTOCOLS as PROTOCOLS
from jaxrec.eval._protocols import evaluate_protocol as evaluate_protocol
from jaxrec.eval._protocols import prepare_protocol as prepare_protocol
from jaxrec.eval._protocols import protocol_pairs as protocol_pairs

# Ranked lists and scores.
from jaxrec.eval._ranking import dot_product_scores as dot_product_scores
from jaxrec.eval._top_k import top_k_items as top_k_items

# Per-user ranking metrics on a hit matrix.
from jaxrec.eval._metrics import ranking_metrics as ranking_metrics
from jaxrec.eval._metrics import hit_rate_at_k as hit_rate_at_k
from jaxrec.eval._metrics import hits_at_k as hits_at_k
from jaxrec.eval._metrics import map_at_k as map_at_k
from jaxrec.eval._metrics import mrr_at_k as mrr_at_k
from jaxrec.eval._metrics import ndcg_at_k as ndcg_at_k
from jaxrec.eval._metrics import precision_at_k as precision_at_k
from jaxrec.eval._metrics import recall_at_k as recall_at_k

# Rating metrics.
from jaxrec.eval._rating import mae as mae
from jaxrec.eval._rating import rmse as rmse
