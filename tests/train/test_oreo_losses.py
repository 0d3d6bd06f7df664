"""OREO's losses on hand-computed tiny examples, the step split on token ids, and the averaging."""

from __future__ import annotations

import pytest
import torch

from ponder.train.oreo import (OREOConfig, action_starts, k3_kl, loss_counts, oreo_losses,
                               reversed_cumsum)

# One response of 3 tokens, reference log-probs 0, beta = 1, R = 1, no KL:
# r = logp = [-0.5, -1, -0.25], A = [-1.75, -1.25, -0.25], V = [0.2, 0.1, 0.3]
# V + A - R = [-2.55, -2.15, -0.95]
LOGP = [-0.5, -1.0, -0.25]
VALUES = [0.2, 0.1, 0.3]
RESID = torch.tensor([-2.55, -2.15, -0.95], dtype=torch.float64)


def _run(level, starts, value_states="starts", averaging="token"):
    logp = torch.tensor([LOGP], dtype=torch.float64, requires_grad=True)
    values = torch.tensor([VALUES], dtype=torch.float64, requires_grad=True)
    cfg = OREOConfig(beta=1.0, alpha=0.0, kl="none", level=level, step_delimiter=(9,),
                     value_states=value_states, averaging=averaging)
    mask = torch.ones(1, 3, dtype=torch.bool)
    out = oreo_losses(logp, torch.zeros(1, 3, dtype=torch.float64), values,
                      torch.tensor([1.0]), mask, torch.tensor([starts]), cfg)
    g_logp_p, g_v_p = torch.autograd.grad(out.policy, (logp, values), allow_unused=True,
                                          retain_graph=True)
    g_logp_v, g_v_v = torch.autograd.grad(out.value, (logp, values), allow_unused=True)
    return out, g_logp_p, g_v_p, g_logp_v, g_v_v


def test_token_level_hand_computed():
    out, g_lp, g_v_pol, g_lp_val, g_v = _run("token", [True, True, True])
    assert out.value.item() == pytest.approx((RESID ** 2).mean().item())
    assert out.policy.item() == pytest.approx((RESID ** 2).mean().item())
    # only the current token's log-ratio carries gradient: d/dlogp_t = 2/3 (V_t + A_t - R)
    torch.testing.assert_close(g_lp[0], 2 / 3 * RESID)
    # the policy loss never reaches the value, the value loss never reaches the policy
    assert g_v_pol is None or torch.all(g_v_pol == 0)
    assert g_lp_val is None or torch.all(g_lp_val == 0)
    torch.testing.assert_close(g_v[0], 2 / 3 * RESID)


def test_step_level_hand_computed():
    # steps {0, 1} and {2}: the step's two tokens share its gradient, the future is detached
    out, g_lp, _, _, g_v = _run("step", [True, False, True])
    r0, r2 = RESID[0], RESID[2]
    assert out.policy.item() == pytest.approx(((r0 ** 2 + r2 ** 2) / 2).item())
    assert out.value.item() == pytest.approx(((r0 ** 2 + r2 ** 2) / 2).item())
    torch.testing.assert_close(g_lp[0], torch.stack([r0, r0, r2]))
    torch.testing.assert_close(g_v[0], torch.stack([r0, 0 * r0, r2]))


def test_response_level_and_all_value_states():
    out, g_lp, _, _, g_v = _run("response", [True, False, False], value_states="all")
    assert out.policy.item() == pytest.approx((RESID[0] ** 2).item())
    torch.testing.assert_close(g_lp[0], 2 * RESID[0].expand(3))
    assert out.value.item() == pytest.approx((RESID ** 2).mean().item())


def test_matches_a_loop_with_beta_reward_mapping_and_k3():
    g = torch.Generator().manual_seed(0)
    B, T = 3, 7
    logp = -torch.rand(B, T, generator=g, dtype=torch.float64)
    ref = -torch.rand(B, T, generator=g, dtype=torch.float64)
    values = torch.randn(B, T, generator=g, dtype=torch.float64)
    mask = torch.zeros(B, T, dtype=torch.bool)
    mask[0, 2:], mask[1, 1:5], mask[2, 3:7] = True, True, True
    reward = torch.tensor([1.0, 0.0, 1.0])
    cfg = OREOConfig(beta=0.03, alpha=0.3, kl="k3", reward_scale=2, reward_shift=-1)
    starts = action_starts(torch.zeros(B, T, dtype=torch.long), mask, "token")
    out = oreo_losses(logp, ref, values, reward, mask, starts, cfg)
    vt, pt, kt = [], [], []
    for b in range(B):
        R = 2 * reward[b].item() - 1
        idx = mask[b].nonzero().flatten().tolist()
        for t in idx:
            A = sum(logp[b, i] - ref[b, i] for i in idx if i >= t)
            vt.append((values[b, t] + 0.03 * A - R) ** 2)
            pt.append((values[b, t] + 0.03 * A - R) ** 2)
            d = ref[b, t] - logp[b, t]
            kt.append(torch.exp(d) - d - 1)
    assert out.value.item() == pytest.approx(torch.stack(vt).mean().item())
    assert out.kl.item() == pytest.approx(torch.stack(kt).mean().item())
    assert out.policy.item() == pytest.approx((torch.stack(pt).mean()
                                               + 0.3 * torch.stack(kt).mean()).item())
    # original averaging: mean per sequence, then over sequences
    cfg_seq = OREOConfig(beta=0.03, alpha=0.0, kl="none", averaging="sequence",
                         reward_scale=2, reward_shift=-1)
    out_s = oreo_losses(logp, ref, values, reward, mask, starts, cfg_seq)
    per_seq, i = [], 0
    for b in range(B):
        n = int(mask[b].sum())
        per_seq.append(torch.stack(vt[i:i + n]).mean())
        i += n
    assert out_s.value.item() == pytest.approx(torch.stack(per_seq).mean().item())


def test_split_batches_sum_to_the_whole_with_a_global_normalizer():
    g = torch.Generator().manual_seed(1)
    B, T = 4, 5
    logp = -torch.rand(B, T, generator=g, dtype=torch.float64)
    ref = -torch.rand(B, T, generator=g, dtype=torch.float64)
    values = torch.randn(B, T, generator=g, dtype=torch.float64)
    mask = torch.rand(B, T, generator=g) > 0.3
    mask[:, 0] = True
    reward = torch.tensor([1.0, 0.0, 0.0, 1.0])
    for averaging in ("token", "sequence"):
        cfg = OREOConfig(kl="k3", averaging=averaging)
        starts = action_starts(torch.zeros(B, T, dtype=torch.long), mask, "token")
        whole = oreo_losses(logp, ref, values, reward, mask, starts, cfg)
        norm = loss_counts(mask, starts, cfg)
        parts = [oreo_losses(logp[s], ref[s], values[s], reward[s], mask[s], starts[s], cfg,
                             normalizer=norm) for s in (slice(0, 1), slice(1, 4))]
        assert sum(p.value for p in parts).item() == pytest.approx(whole.value.item())
        assert sum(p.policy for p in parts).item() == pytest.approx(whole.policy.item())


def test_action_starts_on_token_ids():
    NL, EOS = 4, 2
    # prompt "Q\n\n" (its delimiter is not a response step), response "1\n\n2\n\nA<eos>"
    tokens = [7, NL, NL, 11, NL, NL, 12, NL, NL, 13, EOS, 0]
    mask = [0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 0]
    t = torch.tensor([tokens])
    m = torch.tensor([mask], dtype=torch.bool)
    step = action_starts(t, m, "step", (NL, NL))[0].tolist()
    assert [i for i, s in enumerate(step) if s] == [3, 6, 9]
    assert action_starts(t, m, "response")[0].nonzero().flatten().tolist() == [3]
    assert action_starts(t, m, "token")[0].tolist() == [bool(x) for x in mask]
    # a single-token delimiter, ending the last step: no start after the response
    t2 = torch.tensor([[5, 9, 6, 9]])
    m2 = torch.ones(1, 4, dtype=torch.bool)
    assert action_starts(t2, m2, "step", (9,))[0].tolist() == [True, False, True, False]


def test_k3_and_reversed_cumsum():
    lp = torch.tensor([-1.0, -2.0])
    assert torch.all(k3_kl(lp, lp) == 0)
    assert torch.all(k3_kl(lp, lp.flip(0)) > 0)
    x = torch.tensor([[1.0, 2.0, 3.0]])
    assert reversed_cumsum(x, torch.tensor([[True, True, False]])).tolist() == [[3.0, 2.0, 0.0]]


def test_config_errors():
    with pytest.raises(ValueError, match="level"):
        OREOConfig(level="sentence")
    with pytest.raises(ValueError, match="step_delimiter"):
        OREOConfig(level="step")
    with pytest.raises(ValueError, match="beta"):
        OREOConfig(beta=0.0)
    with pytest.raises(ValueError, match="averaging"):
        OREOConfig(averaging="batch")


def test_shape_errors_name_the_argument():
    z = torch.zeros(2, 3)
    m = torch.ones(2, 3, dtype=torch.bool)
    with pytest.raises(ValueError, match="ref_logp"):
        oreo_losses(z, torch.zeros(2, 4), z, torch.zeros(2), m, m, OREOConfig(kl="k3"))
    with pytest.raises(ValueError, match="reward"):
        oreo_losses(z, z, z, torch.zeros(3), m, m, OREOConfig(kl="k3"))
    with pytest.raises(ValueError, match="needs kl"):
        oreo_losses(z, z, z, torch.zeros(2), m, m, OREOConfig())
