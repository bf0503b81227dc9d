"""Synthetic job history, shared by the history tests and ``benchmarks/bench_history.py``."""

from __future__ import annotations

import json
import random
import time
from typing import Any

from vydra_nb.tracking.history import COLUMNS


def synthetic_rows(n: int, columns: tuple[str, ...] = COLUMNS, seed: int = 1) -> list[tuple[Any, ...]]:
    """``n`` plausible jobs spread over the last 90 days, as rows in ``columns`` order.

    Written with ``executemany`` rather than ``record()`` so setting up 100,000 rows takes about a
    second, not minutes; their shape (prompt, params JSON, output JSON, mixed statuses) matches
    what ``record()`` stores.
    """
    rng = random.Random(seed)
    models = [("veo3", 175), ("grok-imagine", 8), ("grok-imagine", 150), ("nano-banana", 8), ("elevenlabs-tts", 5)]
    statuses = ["completed"] * 8 + ["failed", "cancelled", "running"]
    start = time.time() - 90 * 86400
    rows = []
    for i in range(n):
        model, credits = rng.choice(models)
        status = rng.choice(statuses)
        created = start + i * (90 * 86400 / n)
        prompt = f"synthetic prompt {i}: a lake at sunset, cinematic"
        url = f"https://cdn.example/v/{i}.mp4" if status == "completed" else None
        values = {
            "id": f"job_{i:08d}", "model": model, "status": status, "progress": 100 if status == "completed" else 40,
            "prompt": prompt, "params": json.dumps({"prompt": prompt, "aspect_ratio": "16:9"}),
            "credits_charged": credits, "credits_refunded": credits if status in ("failed", "cancelled") else None,
            "refund_status": None, "created_at": created, "started_at": created + 2,
            "completed_at": created + 95 if status == "completed" else None, "updated_at": created + 95,
            "output": json.dumps({"videoUrl": url}) if url else None, "media_url": url, "local_path": None,
            "error_code": "CONTENT_VIOLATION" if status == "failed" else None,
            "error_message": "Content moderation failed" if status == "failed" else None,
            "backend": "vydra", "host": "www.vydra.ai", "session": "bench:1", "notebook": "Untitled.ipynb",
            "idempotency_key": None, "recorded_at": created,
            "duration_s": 95.0 if status == "completed" else None, "verdict": None, "note": None, "tag": None,
            "catalog_credits": credits, "pricing_unit": "video" if credits > 8 else "image",
        }
        rows.append(tuple(values[c] for c in columns))
    return rows
