r"""Recommendation-quality monitors of a running server: plain arithmetic, no HTTP.

What a production team watches besides latency (each is a number on ``/metrics`` and
``/status``; definitions here are the ones tested against hand-worked cases):

- **catalog coverage**: distinct items ever served / items in the catalog now (added included).
- **popularity percentile** of a served item with training count :math:`c`, against the
  :math:`N` training items' counts :math:`c_j` (mid-rank for ties):

  .. math:: p(c) = \frac{\#\{j : c_j < c\} + \tfrac12 \#\{j : c_j = c\}}{N}

  averaged over every served slot; an added item has :math:`c = 0`. 0.5 is popularity-neutral,
  near 1 is a list of blockbusters.
- **cold share**: served slots holding an item added while serving / all served slots.
- **online hit rate**: a list served to user :math:`u` at time :math:`t` is a *hit* when an
  event :math:`(u, i)` with :math:`i` in the list arrives in :math:`[t, t + W]`. The rate is hit
  lists / decided lists, where a list is decided once it is hit or its window has closed (lists
  still open and not yet hit are pending, counted in neither).
- **feature drift** of added items against training items, per modality: with training mean
  :math:`\mu_d`, standard deviation :math:`\sigma_d` and the mean :math:`\bar x_d` of the
  :math:`n` added rows, the z-score of the mean :math:`z_d = (\bar x_d - \mu_d)/(\sigma_d/\sqrt n)`
  (reported as max and mean of :math:`|z_d|` over dimensions) and the distance of distributions
  :math:`\frac1D \sum_d W_1(\text{train}_d, \text{added}_d)/\sigma_d`, the per-dimension
  1-Wasserstein distance in training standard deviations (dimensions with :math:`\sigma_d = 0`
  are left out of both).
"""

from __future__ import annotations

import collections
import threading

import numpy as np

from jaxrec.errors import DataError


def popularity_percentiles(train_counts: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Mid-rank percentile of each value of ``counts`` among ``train_counts`` (see the module doc)."""
    reference = np.sort(np.asarray(train_counts))
    counts = np.asarray(counts)
    below = np.searchsorted(reference, counts, side="left")
    at_or_below = np.searchsorted(reference, counts, side="right")
    return (below + 0.5 * (at_or_below - below)) / max(len(reference), 1)


def wasserstein_1d(u: np.ndarray, v: np.ndarray) -> float:
    """1-Wasserstein distance of two empirical 1-D distributions: the integral of |F_u - F_v|."""
    u = np.sort(np.asarray(u, dtype=np.float64))
    v = np.sort(np.asarray(v, dtype=np.float64))
    grid = np.sort(np.concatenate([u, v]))
    widths = np.diff(grid)
    cdf_u = np.searchsorted(u, grid[:-1], side="right") / len(u)
    cdf_v = np.searchsorted(v, grid[:-1], side="right") / len(v)
    return float(np.sum(np.abs(cdf_u - cdf_v) * widths))


class QualityMonitor:
    """Coverage, popularity, cold share and online hit rate of the lists a server hands out.

    Thread-safe. ``train_counts[i]`` is item i's training interaction count; items with ids at
    or past ``len(train_counts)`` are the ones added while serving.
    """

    def __init__(self, train_counts: np.ndarray, *, window_seconds: float = 1800.0, max_open_lists: int = 100_000):
        self._lock = threading.Lock()
        self.train_counts = np.asarray(train_counts, dtype=np.int64)
        self.n_train_items = len(self.train_counts)
        self._train_percentile = popularity_percentiles(self.train_counts, self.train_counts)
        self._cold_percentile = float(popularity_percentiles(self.train_counts, np.zeros(1))[0])
        self.window = float(window_seconds)
        self.max_open = int(max_open_lists)
        self.n_items = self.n_train_items
        self._served = np.zeros(self.n_items, dtype=bool)
        self.slots = 0
        self.cold_slots = 0
        self.percentile_sum = 0.0
        self.lists = 0
        self.hit_lists = 0
        self.decided_lists = 0
        self._open: collections.deque = collections.deque()  # records in serve-time order
        self._open_hits = 0  # records in _open already hit (decided, kept to expire in order)
        self._open_by_user: dict[int, list] = collections.defaultdict(list)

    def set_catalog_size(self, n_items: int) -> None:
        with self._lock:
            if n_items > len(self._served):
                grown = np.zeros(max(n_items, 2 * len(self._served)), dtype=bool)
                grown[:len(self._served)] = self._served
                self._served = grown
            self.n_items = max(self.n_items, int(n_items))

    def record_served(self, user_id: int | None, items, now: float) -> None:
        """One served list (``user_id`` None for a fold-in user, who cannot be hit later)."""
        items = np.asarray(items, dtype=np.int64).ravel()
        if items.size and items.max() >= len(self._served):
            self.set_catalog_size(int(items.max()) + 1)
        with self._lock:
            self._expire(now)
            self._served[items] = True
            self.slots += items.size
            cold = items >= self.n_train_items
            self.cold_slots += int(cold.sum())
            self.percentile_sum += float(self._train_percentile[items[~cold]].sum() + cold.sum() * self._cold_percentile)
            self.lists += 1
            if user_id is not None:
                record = [now, int(user_id), set(items.tolist()), False]
                self._open.append(record)
                self._open_by_user[int(user_id)].append(record)
                while len(self._open) > self.max_open:
                    self._decide(self._open.popleft())

    def record_events(self, events, now: float) -> None:
        """Interactions that arrived (``(user, item)`` pairs): they may hit open lists."""
        with self._lock:
            self._expire(now)
            for user, item in events:
                for record in self._open_by_user.get(int(user), ()):
                    if not record[3] and record[0] <= now <= record[0] + self.window and int(item) in record[2]:
                        record[3] = True
                        self._open_hits += 1
                        self.hit_lists += 1
                        self.decided_lists += 1

    def _expire(self, now: float) -> None:
        while self._open and (self._open[0][0] + self.window < now):
            self._decide(self._open.popleft())

    def _decide(self, record) -> None:
        """Closes a record: counted as decided unless a hit already counted it."""
        if record[3]:
            self._open_hits -= 1
        else:
            self.decided_lists += 1
        user_records = self._open_by_user[record[1]]
        user_records.remove(record)
        if not user_records:
            del self._open_by_user[record[1]]

    def summary(self, now: float) -> dict:
        with self._lock:
            self._expire(now)
            distinct = int(self._served[:self.n_items].sum())
            return {
                "lists_served": self.lists,
                "catalog_size": self.n_items,
                "catalog_coverage": distinct / self.n_items if self.n_items else 0.0,
                "mean_popularity_percentile": self.percentile_sum / self.slots if self.slots else None,
                "cold_share": self.cold_slots / self.slots if self.slots else None,
                "hit_rate": self.hit_lists / self.decided_lists if self.decided_lists else None,
                "hit_lists": self.hit_lists,
                "decided_lists": self.decided_lists,
                "open_lists": len(self._open) - self._open_hits,
                "hit_window_seconds": self.window,
            }


class DriftMonitor:
    """Feature drift of added items against the training items, one entry per modality.

    ``train_features``: modality -> array (n, d) of the training items' rows that have the
    modality. At most ``max_reference`` of them (a fixed-seed sample) are kept for the
    distribution distance; the means and standard deviations use them all.
    """

    def __init__(self, train_features: dict[str, np.ndarray], *, max_reference: int = 5000, max_added: int = 10_000):
        self._lock = threading.Lock()
        self.max_added = int(max_added)
        self._stats = {}
        rng = np.random.default_rng(0)
        for name, rows in train_features.items():
            rows = np.asarray(rows, dtype=np.float64)
            rows = rows.reshape(len(rows), -1)
            sample = rows if len(rows) <= max_reference else rows[np.sort(rng.choice(len(rows), max_reference, replace=False))]
            self._stats[name] = {"mean": rows.mean(0), "std": rows.std(0), "reference": sample}
        self._added: dict[str, list[np.ndarray]] = {name: [] for name in self._stats}

    def record_added(self, features: dict[str, np.ndarray]) -> None:
        """Added items' rows per modality: ``(n, d)``, or one item's ``(d,)`` row."""
        checked = {}
        for name, rows in features.items():
            if name not in self._added:
                continue
            rows = np.asarray(rows, dtype=np.float64)
            rows = rows[None, :] if rows.ndim == 1 else rows.reshape(len(rows), -1)
            width = self._stats[name]["mean"].shape[0]
            if rows.shape[1] != width:
                raise DataError("wrong feature width", field=f"features.{name}", found=f"shape {rows.shape}",
                                expected=f"(n, {width}) rows, the training width")
            checked[name] = rows
        with self._lock:
            for name, rows in checked.items():
                self._added[name].extend(rows)
                del self._added[name][:-self.max_added]

    def summary(self) -> dict:
        with self._lock:
            added = {name: np.array(rows) for name, rows in self._added.items()}
        report = {}
        for name, stats in self._stats.items():
            rows = added[name]
            if len(rows) == 0:
                report[name] = {"n_added": 0, "z_max": None, "z_mean": None, "w1": None}
                continue
            usable = stats["std"] > 0
            std = stats["std"][usable]
            z = np.abs(rows.mean(0)[usable] - stats["mean"][usable]) / (std / np.sqrt(len(rows)))
            w1 = [wasserstein_1d(stats["reference"][:, d], rows[:, d]) for d in np.flatnonzero(usable)]
            report[name] = {
                "n_added": int(len(rows)),
                "z_max": float(z.max()) if z.size else None,
                "z_mean": float(z.mean()) if z.size else None,
                "w1": float(np.mean(np.asarray(w1) / std)) if w1 else None,
            }
        return report


class LatencyTimeline:
    """Latency and hit rate over time: one sample per interval, the newest ``max_samples`` kept."""

    def __init__(self, *, max_samples: int = 720):
        self._lock = threading.Lock()
        self._pending: list[float] = []
        self.samples: collections.deque = collections.deque(maxlen=max_samples)

    def record(self, seconds: float) -> None:
        with self._lock:
            self._pending.append(seconds)

    def sample(self, now: float, extra: dict) -> dict:
        """Closes an interval: p50/p99 (ms, numpy's linear interpolation) of the latencies in it."""
        with self._lock:
            latencies, self._pending = np.asarray(self._pending), []
        point = {
            "time": now,
            "requests": int(latencies.size),
            "p50_ms": float(np.percentile(latencies, 50) * 1e3) if latencies.size else None,
            "p99_ms": float(np.percentile(latencies, 99) * 1e3) if latencies.size else None,
            **extra,
        }
        with self._lock:
            self.samples.append(point)
        return point

    def history(self) -> list[dict]:
        with self._lock:
            return list(self.samples)
