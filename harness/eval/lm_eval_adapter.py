"""lm-evaluation-harness ``LM`` over a harness model (optional extra: ``pip install harness[lm-eval]``).

Any lm-eval task can then score a harness checkpoint::

    from harness.eval.lm_eval_adapter import HarnessLM
    import lm_eval
    lm = HarnessLM.from_spec("runs/<id>")          # or wrap an EvalLM: HarnessLM(eval_lm)
    lm_eval.simple_evaluate(model=lm, tasks=["hellaswag"])

Requests are tokenized as lm-eval's Hugging Face backend does: trailing whitespace of the
context moves to the continuation, and the continuation's tokens are those of
``encode(context + continuation)`` after ``encode(context)``'s.
"""

from __future__ import annotations

try:
    from lm_eval.api.model import LM
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError("the lm-eval adapter needs lm-eval: pip install 'harness[lm-eval]'") from exc

from harness.eval.lm import EvalLM


def split_request(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """(context ids, continuation ids), lm-eval style."""
    spaces = len(context) - len(context.rstrip())
    if spaces:
        continuation = context[-spaces:] + continuation
        context = context[:-spaces]
    whole = tokenizer.encode(context + continuation)
    context_ids = tokenizer.encode(context)
    if whole[: len(context_ids)] != context_ids:  # a merge across the boundary: fall back to concatenation
        return context_ids, tokenizer.encode(continuation)
    return context_ids, whole[len(context_ids):]


class HarnessLM(LM):
    """lm-eval's ``loglikelihood``, ``loglikelihood_rolling`` and ``generate_until`` on an EvalLM."""

    def __init__(self, eval_lm: EvalLM, max_gen_toks: int = 256):
        super().__init__()
        self.eval_lm = eval_lm
        self.max_gen_toks = max_gen_toks

    @classmethod
    def from_spec(cls, spec: str, *, batch_size: int = 8, dtype: str = "float32") -> "HarnessLM":
        """Load a model by spec (run dir, checkpoint, hf:DIR, gguf:FILE, preset)."""
        from harness.eval.suite import load_eval_lm

        return cls(load_eval_lm(spec, dtype=dtype, batch_size=batch_size))

    @property
    def tokenizer_name(self) -> str:
        return getattr(self.eval_lm.tokenizer, "name", "harness")

    def loglikelihood(self, requests) -> list[tuple[float, bool]]:
        tok = self.eval_lm.tokenizer
        pairs = [split_request(tok, *request.args[:2]) for request in requests]
        return self.eval_lm.loglikelihood(pairs)

    def loglikelihood_rolling(self, requests) -> list[float]:
        tok = self.eval_lm.tokenizer
        return self.eval_lm.rolling_loglikelihood([tok.encode(request.args[0]) for request in requests])

    def generate_until(self, requests) -> list[str]:
        tok = self.eval_lm.tokenizer
        # Requests sharing decoding settings are generated together (batched, length-sorted).
        groups: dict[tuple, list[int]] = {}
        settings = []
        for index, request in enumerate(requests):
            context, kwargs = request.args[0], dict(request.args[1] if len(request.args) > 1 else {})
            until = kwargs.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            temperature = float(kwargs.get("temperature", 0.0)) if kwargs.get("do_sample", False) else 0.0
            key = (tuple(until), int(kwargs.get("max_gen_toks", self.max_gen_toks)), temperature,
                   float(kwargs.get("top_p", 1.0)))
            groups.setdefault(key, []).append(index)
            settings.append(context)
        outputs = [""] * len(requests)
        for (until, max_new, temperature, top_p), indices in groups.items():
            prompts = [tok.encode(settings[i]) for i in indices]
            texts = self.eval_lm.generate(prompts, max_new, temperature=temperature, top_p=top_p,
                                          stop_strings=until, desc="lm-eval generate")
            for i, (text, _) in zip(indices, texts):
                outputs[i] = text
        return outputs
