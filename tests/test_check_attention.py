"""tinylm check-attention: each classic mistake is named, a right class passes whatever its
names, signature and return form, the learner's own errors come back as one line, and the
command takes key=value like every other."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from conftest import REPO, run_script

from tinylm.cli import check_command
from tinylm.errors import ConfigError
from tinylm.learner.adapter import CheckError, LearnerError
from tinylm.learner.checker.checklist import check_target

EXAMPLES = REPO / "docs" / "attention-examples"
# example file → the mistake its verdict must name (None: it must pass)
VERDICTS = {
    "correct.py": None,
    "heads_not_transposed.py": "heads not transposed",
    "scale_d_model.py": "√d_model instead of √head_dim",
    "no_scale.py": "scores not scaled",
    "softmax_wrong_axis.py": "softmax over the wrong axis",
    "mask_after_softmax.py": "mask applied after the softmax",
    "no_mask.py": "no causal mask",
    "heads_merged_wrong.py": "heads merged in the wrong order",
    "diagonal_hidden.py": "finite: its output is NaN at position 0 of 7: the diagonal hidden",
    "diagonal_hidden_tril.py": "the diagonal hidden",
    "mask_off_by_one.py": "the mask off by one: each position sees the next",
    "mask_filled_with_zero.py": "masked scores filled with 0.0, which does not hide a key",
    "mask_buffer_short.py": "context: mask buffer tril built for 32 positions; the model trains with 64",
    "dropout_at_eval.py": "repeatable: its output changes between two identical calls in eval mode",
    "relu_after_projections.py": "a relu after the Q/K/V projections",
    "heads_wrong_width.py": "heads of the wrong width: it attends with 12 head(s) of width 4",
    "residual_inside.py": "its input added back to its output",
}
# the lines that must not appear with those mistakes: no verdict blames causality, gradients or
# precision for what an earlier line explains
ONLY = {"diagonal_hidden.py": "finite", "dropout_at_eval.py": "repeatable", "mask_buffer_short.py": "context"}


def test_every_example_is_checked() -> None:
    assert sorted(p.name for p in EXAMPLES.glob("*.py")) == sorted(VERDICTS)


@pytest.mark.parametrize("name", sorted(VERDICTS))
def test_each_example_s_verdict_names_its_mistake(name: str) -> None:
    report, _ = check_target(f"{EXAMPLES / name}:MultiHeadAttention")
    expected = VERDICTS[name]
    attention = report.verdict("attention")
    if expected is None:
        assert report.ok, str(report)
        return
    assert not report.ok
    if name in ONLY:  # named by its own line; every other line holds or is not run
        failed = [line.text for line in report.lines if not line.ok]
        assert len(failed) == 1 and failed[0].startswith(expected), str(report)
        assert report.refusal("x").startswith("x is refused before training: " + ONLY[name])
    else:
        assert f"{expected}" in attention and "reproduces it exactly" in attention, attention
        assert len(report.mistakes) == 1, report.mistakes  # the one mistake, nothing else
    # Each line is one line, marked.
    assert all(str(line)[0] in "✓✗" and "\n" not in str(line) for line in report.lines)


def learner_file(tmp_path: Path, source: str, name: str = "mine.py") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(source))
    return path


# A tutorial's way: forward(Q, K, V, mask=None), masked_fill(mask == 0, -1e9), a dict back, and the
# scale taken from the input's width (√d_feat, not √d_head).
DICT_CLASS = """
import numpy as np
import torch
import torch.nn as nn

class MultiHeadAttention(nn.Module):
    def __init__(self, d_feat=128, n_head=5, USE_BIAS=True, dropout_p=0.1):
        super().__init__()
        self.d_feat, self.n_head, self.d_head = d_feat, n_head, d_feat // n_head
        self.lin_Q = nn.Linear(d_feat, d_feat, USE_BIAS)
        self.lin_K = nn.Linear(d_feat, d_feat, USE_BIAS)
        self.lin_V = nn.Linear(d_feat, d_feat, USE_BIAS)
        self.lin_O = nn.Linear(d_feat, d_feat, USE_BIAS)
        self.dropout = nn.Dropout(p=dropout_p)

    def forward(self, Q, K, V, mask=None):
        n_batch = Q.shape[0]
        Q_feat, K_feat, V_feat = self.lin_Q(Q), self.lin_K(K), self.lin_V(V)
        Q_split = Q_feat.view(n_batch, -1, self.n_head, self.d_head).permute(0, 2, 1, 3)
        K_split = K_feat.view(n_batch, -1, self.n_head, self.d_head).permute(0, 2, 1, 3)
        V_split = V_feat.view(n_batch, -1, self.n_head, self.d_head).permute(0, 2, 1, 3)
        d_K = SCALE
        scores = torch.matmul(Q_split, K_split.permute(0, 1, 3, 2)) / np.sqrt(d_K)
        if mask is not None:
            scores = scores.masked_fill(mask == 0, -1e9)
        attention = torch.softmax(scores, dim=-1)
        x_raw = torch.matmul(self.dropout(attention), V_split)
        x_rsh1 = x_raw.permute(0, 2, 1, 3).contiguous()
        x_rsh2 = x_rsh1.view(n_batch, -1, self.d_feat)
        x = self.lin_O(x_rsh2)
        return {"Q_feat": Q_feat, "K_feat": K_feat, "V_feat": V_feat, "scores": scores,
                "attention": attention, "x_rsh2": x_rsh2, "x": x}
"""


def test_a_dict_returning_q_k_v_mask_class_scaled_by_the_width_is_named(tmp_path: Path) -> None:
    path = learner_file(tmp_path, DICT_CLASS.replace("SCALE", "K.size()[-1]"))
    report, built = check_target(f"{path}:MultiHeadAttention")
    assert built.call == "MultiHeadAttention(d_feat=48, n_head=4)"
    assert "forward(Q, K, V, mask) → a dict: output ['x'], weights ['attention']" in report.verdict("shape")
    assert report.causal and report.verdict("causal").startswith("causal: changing")
    assert "√d_model instead of √head_dim" in report.verdict("attention")
    assert "float16 it overflows" in report.verdict("bf16")  # -1e9, in the margin of a passing line


def test_the_same_class_scaled_by_the_head_width_passes(tmp_path: Path) -> None:
    path = learner_file(tmp_path, DICT_CLASS.replace("SCALE", "self.d_head"))
    report, _ = check_target(f"{path}:MultiHeadAttention", kwargs={"dropout_p": 0.2})
    assert report.ok, str(report)
    assert report.returns_weights


def test_a_fused_qkv_class_that_masks_itself_and_returns_a_pair_passes(tmp_path: Path) -> None:
    path = learner_file(tmp_path, """
        import torch
        from torch import nn

        class CausalSelf(nn.Module):
            def __init__(self, embed_dim, heads):
                super().__init__()
                self.heads = heads
                self.to_qkv = nn.Linear(embed_dim, 3 * embed_dim, bias=False)
                self.out_proj = nn.Linear(embed_dim, embed_dim)
                self.register_buffer("tril", torch.tril(torch.ones(64, 64)))

            def forward(self, hidden):
                B, T, C = hidden.shape
                q, k, v = self.to_qkv(hidden).chunk(3, dim=-1)
                q, k, v = (t.reshape(B, T, self.heads, -1).transpose(1, 2) for t in (q, k, v))
                att = (q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5
                att = att.masked_fill(self.tril[:T, :T] == 0, float("-inf")).softmax(-1)
                y = (att @ v).transpose(1, 2).reshape(B, T, C)
                return self.out_proj(y), att
    """)
    report, _ = check_target(f"{path}:CausalSelf")
    assert report.ok, str(report)
    assert "forward(hidden) → a tuple (output, weights)" in report.verdict("shape")
    assert "it masks the future itself" in report.verdict("causal")
    assert "to_qkv (Q, K, V fused)" in report.verdict("attention")


def test_a_class_without_mask_that_returns_a_tensor_is_refused_as_not_causal(tmp_path: Path) -> None:
    path = learner_file(tmp_path, """
        import torch
        import torch.nn.functional as F
        from torch import nn

        class MyMultiHeadAttention(nn.Module):
            def __init__(self, hidden_size, n_head):
                super().__init__()
                self.linear_q = nn.Linear(hidden_size, hidden_size)
                self.linear_k = nn.Linear(hidden_size, hidden_size)
                self.linear_v = nn.Linear(hidden_size, hidden_size)
                self.linear_o = nn.Linear(hidden_size, hidden_size)
                self.head_dim = hidden_size // n_head
                self.scaling = self.head_dim ** -0.5

            def forward(self, x: torch.Tensor):
                B, L, D = x.shape
                query = self.linear_q(x).view(B, L, -1, self.head_dim).transpose(1, 2)
                key = self.linear_k(x).view(B, L, -1, self.head_dim).transpose(1, 2)
                value = self.linear_v(x).view(B, L, -1, self.head_dim).transpose(1, 2)
                attn_weights = F.softmax(torch.matmul(query, key.transpose(2, 3)) * self.scaling, dim=-1)
                out = torch.matmul(attn_weights, value).transpose(1, 2).reshape(B, L, -1)
                return self.linear_o(out)
    """)
    report, _ = check_target(f"{path}:MyMultiHeadAttention", d_model=32, heads=2)
    assert not report.causal and report.verdict("causal").startswith("causal: output 0 changes when position")
    assert "no causal mask reproduces it exactly" in report.verdict("attention")
    assert report.verdict("gradients").startswith("gradients: reach all 8")


def test_heads_as_a_list_of_modules_are_stacked_and_the_width_scale_named(tmp_path: Path) -> None:
    path = learner_file(tmp_path, """
        import torch
        import torch.nn as nn
        from torch.nn import functional as F

        n_embd = 48

        class Head(nn.Module):
            def __init__(self, head_size):
                super().__init__()
                self.key = nn.Linear(n_embd, head_size, bias=False)
                self.query = nn.Linear(n_embd, head_size, bias=False)
                self.value = nn.Linear(n_embd, head_size, bias=False)
                self.register_buffer("tril", torch.tril(torch.ones(32, 32)))

            def forward(self, x):
                B, T, C = x.shape
                k, q = self.key(x), self.query(x)
                wei = q @ k.transpose(-2, -1) * C**-0.5
                wei = F.softmax(wei.masked_fill(self.tril[:T, :T] == 0, float("-inf")), dim=-1)
                return wei @ self.value(x)

        class MultiHeadAttention(nn.Module):
            def __init__(self, num_heads, head_size):
                super().__init__()
                self.heads = nn.ModuleList([Head(head_size) for _ in range(num_heads)])
                self.proj = nn.Linear(n_embd, n_embd)

            def forward(self, x):
                return self.proj(torch.cat([h(x) for h in self.heads], dim=-1))
    """)
    report, built = check_target(f"{path}:MultiHeadAttention", kwargs={"head_size": 12})
    assert (built.d_model, built.heads) == (48, 4)
    assert report.causal
    assert "√d_model instead of √head_dim reproduces it exactly" in report.verdict("attention")


def test_the_learner_s_errors_are_one_line_saying_what_tinylm_was_doing(tmp_path: Path) -> None:
    broken = learner_file(tmp_path, "import torch\nx = undefined_name\n", "broken.py")
    with pytest.raises(LearnerError, match=r"^importing .*broken.py: NameError: name 'undefined_name' is not "
                                           r"defined \(line 2 of broken.py\)$"):
        check_target(f"{broken}:MultiHeadAttention")
    with pytest.raises(CheckError, match="has no class Attention; it defines MultiHeadAttention"):
        check_target(f"{EXAMPLES / 'correct.py'}:Attention")
    with pytest.raises(CheckError, match=r"expected path/to/file\.py:ClassName"):
        check_target("correct.py")
    failing = learner_file(tmp_path, """
        from torch import nn

        class Attn(nn.Module):
            def __init__(self, d_model, num_heads):
                super().__init__()
                self.W_Q = nn.Linear(d_model, d_model)

            def forward(self, x):
                return self.W_Q(x).view(3, -1, 5)
    """, "failing.py")
    report, _ = check_target(f"{failing}:Attn")
    assert report.lines[0].text.startswith("shape: calling forward(x) on (B, T, d) = (2, 7, 48) failed: "
                                           "RuntimeError: shape '[3, -1, 5]' is invalid")
    assert "(line 10 of failing.py)" in report.lines[0].text


def test_the_command_prints_the_checklist_and_exits_1_on_a_mistake() -> None:
    mistaken = run_script("check_attention.py", f"{EXAMPLES / 'scale_d_model.py'}:MultiHeadAttention")
    assert mistaken.returncode == 1, mistaken.stderr
    lines = mistaken.stdout.splitlines()
    assert len(lines) == 7 and lines[4].startswith("✗ attention:")
    assert sum(line.startswith("✓") for line in lines) == 5
    right = run_script("check_attention.py", f"{EXAMPLES / 'correct.py'}:MultiHeadAttention",
                       "d_model=32", "heads=2")
    assert right.returncode == 0 and "Traceback" not in right.stderr, right.stderr
    missing = run_script("check_attention.py", "no/such.py:MultiHeadAttention")
    assert missing.returncode == 2
    assert missing.stderr.startswith("error: attention: no file ") and len(missing.stderr.splitlines()) == 1


def test_the_readme_shows_the_checker_s_real_output() -> None:
    readme = (REPO / "README.md").read_text().splitlines()
    start = next(i for i, line in enumerate(readme) if line.startswith("$ tinylm check-attention "))
    end = next(i for i in range(start, len(readme)) if readme[i].startswith("```"))
    argv = readme[start].removeprefix("$ tinylm check-attention ").split()
    result = run_script("check_attention.py", *argv)
    assert result.stdout.splitlines() == readme[start + 1:end]


def test_a_class_that_sees_the_future_phrases_its_own_refusal() -> None:
    target = f"{EXAMPLES / 'no_mask.py'}:MultiHeadAttention"
    report, _ = check_target(target)
    refusal = report.refusal(target)
    assert refusal.startswith(f"{target} is refused, a model that sees the future learns nothing useful; "
                              f"causal: output ")
    assert "no causal mask: hide future keys before the softmax" in refusal and "\n" not in refusal
    assert "the attention line says why" in report.verdict("causal")  # the next line names it
    assert check_target(f"{EXAMPLES / 'correct.py'}:MultiHeadAttention")[0].refusal(target) is None


# A class whose projections have names tinylm does not guess, and a constructor argument it needs.
ODD_NAMES = """
import torch
from torch import nn

class Odd(nn.Module):
    def __init__(self, d_model, num_heads, scale):
        super().__init__()
        self.num_heads, self.scale = num_heads, scale
        self.alpha, self.beta = nn.Linear(d_model, d_model), nn.Linear(d_model, d_model)
        self.gamma, self.delta = nn.Linear(d_model, d_model), nn.Linear(d_model, d_model)

    def forward(self, x):
        B, T, d = x.shape
        q, k, v = (f(x).view(B, T, self.num_heads, -1).transpose(1, 2)
                   for f in (self.alpha, self.beta, self.gamma))
        scores = (q @ k.transpose(-2, -1)) / (q.size(-1) ** 0.5) * self.scale
        scores = scores.masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(), float("-inf"))
        return self.delta((scores.softmax(-1) @ v).transpose(1, 2).reshape(B, T, d))
"""


def test_the_command_takes_key_value_for_kwargs_and_the_layer_map(tmp_path: Path) -> None:
    path = learner_file(tmp_path, ODD_NAMES)
    result = run_script("check_attention.py", f"attention={path}:Odd", "kwargs.scale=1.0", "d_model=32",
                        "heads=2", "map.q=alpha", "map.k=beta", "map.v=gamma", "map.o=delta")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Odd(scale=1.0, d_model=32, num_heads=2)" in result.stdout
    assert "(its weights: alpha, beta, gamma, O: delta)" in result.stdout


@pytest.mark.parametrize("arguments, message", [
    (["--d-model", "64"], "--d-model: tinylm takes key=value; write d_model=64"),
    (["--heads=8"], "--heads: tinylm takes key=value; write heads=8"),
    (["--kwargs", "d_feat=48", "dropout_p=0.0"],
     "--kwargs: tinylm takes key=value; write kwargs.d_feat=48 kwargs.dropout_p=0.0"),
    (["--map", "q=W_Q,k=W_K"], "--map: tinylm takes key=value; write map.q=W_Q map.k=W_K"),
    (["map.qvk=c_attn"], "map.qvk: unknown key; did you mean map.qkv? known keys are q, k, v, o, qkv"),
    (["head=8"], "head: unknown key; did you mean heads? known keys are attention, d_model, heads, "
                 "block_size, kwargs, map"),
    (["heads=5"], "heads: 5 heads do not divide d_model=48; choose a divisor of d_model"),
    (["docs/x.py:Other"], "attention: given twice ('attention=docs/x.py:Mine' and 'docs/x.py:Other'); "
                          "name one class"),
])
def test_old_flags_and_unknown_keys_are_one_line_naming_the_key(arguments: list[str], message: str
                                                                ) -> None:
    with pytest.raises(ConfigError) as error:
        check_command(["check-attention", "docs/x.py:Mine", *arguments])
    assert str(error.value) == message


def test_an_old_flag_exits_2_with_its_new_spelling() -> None:
    result = run_script("check_attention.py", f"{EXAMPLES / 'correct.py'}:MultiHeadAttention",
                        "--kwargs", "dropout_p=0.0")
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "error: --kwargs: tinylm takes key=value; write kwargs.dropout_p=0.0"]


LEARNERS = REPO / "tests" / "learners"  # classes written the way the tutorials write them


@pytest.mark.parametrize("target, kwargs, header, verdict", [
    # nanoGPT's CausalSelfAttention(config): a config object; its mask buffer built for 32 positions
    ("nanogpt_config.py:CausalSelfAttention", {},
     "CausalSelfAttention(config: n_embd=48, n_head=4, dropout=0.0, bias=True, block_size=64): 4 head(s) "
     "of width 12", "context: mask buffer bias built for 32 positions; the model trains with 64: at T=64"),
    # the LLM book's MultiHeadAttention(d_in, d_out, context_length, dropout, num_heads, qkv_bias=False)
    ("llm_book.py:MultiHeadAttention", {},
     "MultiHeadAttention(d_in=48, d_out=48, num_heads=4, context_length=64, dropout=0.0): 4 head(s) of "
     "width 12", None),
    # the ML book's nn.Parameter matrices used as W @ x: one head of the full width, masked with 0.0
    ("ml_book_parameters.py:SelfAttentionParams", {}, "SelfAttentionParams(d=48): 1 head(s) of width 48",
     "masked scores filled with 0.0, which does not hide a key reproduces it exactly"),
    # F.dropout without training=self.training, hidden by kwargs.attention_dropout=0.0
    ("dropout_kwarg.py:MyMultiHeadAttention", {"attention_dropout": 0.0}, "4 head(s) of width 12",
     "repeatable: with attention_dropout=0.1 (its default) its output changes between two identical calls "
     "in eval mode: dropout with training=self.training? The ✓ lines hold only because "
     "kwargs.attention_dropout=0.0"),
    # the LLM book's required dropout, given 0.0 by tinylm, hides F.dropout without training=
    ("round_two.py:MultiHeadAttention", {}, "dropout=0.0): 4 head(s) of width 12",
     "repeatable: built with dropout 0.1 its output changes between two identical calls in eval mode: "
     "dropout with training=self.training? (F.dropout(w, p, training=self.training), or an nn.Dropout "
     "module); the ✓ lines hold only because tinylm built it with dropout=0.0"),
    ("round_two.py:SelfAttention", {}, "SelfAttention(config: ",
     "the ✓ lines hold only because tinylm built it with config.dropout=0.0"),
    # a fill of -3 the scores are divided by √head_dim after: named as written
    ("round_two.py:FilledThenScaled", {}, "4 head(s) of width 12",
     "masked scores filled with -3, which does not hide a key reproduces it exactly"),
    # (heads, d, d_head) Parameters; the output Linear named `linear`, its one other (d, d) layer
    ("round_two.py:ParameterHeads", {}, "ParameterHeads(d=48, h=4): 4 head(s) of width 12", None),
    # a heads argument of 4, split 8 ways
    ("round_two.py:MyMultiHeadAttention", {}, "MyMultiHeadAttention(hidden_size=48, n_head=4): 4 head(s)",
     "heads of the wrong width: it attends with 8 head(s) of width 6 reproduces it exactly"),
])
def test_every_constructor_learners_write(target: str, kwargs: dict, header: str, verdict: str | None
                                          ) -> None:
    report, _ = check_target(f"{LEARNERS / target}", kwargs=kwargs)
    assert header in report.header, report.header
    if verdict is None:
        assert report.ok, str(report)
    else:
        assert not report.ok and verdict in str(report), str(report)


def test_parameter_projections_are_mapped_by_name(tmp_path: Path) -> None:
    source = (LEARNERS / "ml_book_parameters.py").read_text()
    for old, new in [("U_query", "A"), ("U_key", "B"), ("U_value", "C")]:
        source = source.replace(old, new)
    path = learner_file(tmp_path, source)
    report, _ = check_target(f"{path}:SelfAttentionParams")
    assert "name them, e.g. map.q=W_Q" in report.verdict("attention")
    mapped, _ = check_target(f"{path}:SelfAttentionParams", mapping={"q": "A", "k": "B", "v": "C"})
    assert "masked scores filled with 0.0" in mapped.verdict("attention"), str(mapped)


def test_a_partial_map_keeps_the_projections_found_by_name() -> None:
    report, _ = check_target(f"{LEARNERS / 'round_two.py'}:ParameterHeads", mapping={"o": "linear"})
    assert report.ok and "U_query, U_key, U_value, O: linear" in report.verdict("attention"), str(report)
