"""Work vs adherence per sampling setting (sora_jax/evaluation/cache_adherence.py, tools/benchmarks/cache_adherence.py).

On the tiny trained workdir (depth 1, so a cached call costs a whole forward: there the CFG window saves the
work), 2 prompts, 4 Euler steps, plain and one cache + window setting: the report's schema; plain's forwards
are the sampler's count (2 per call); a cache that always may reuse reuses exactly the calls its guards allow,
the counted forwards follow the schedule call by call, and the setting does fewer forwards than plain. The comparison
arithmetic (reduction, points, flips, target, best) is checked on hand-made results.
"""

import json
import os

import numpy as np
import pytest

from sora_jax.diffusion import block_cache
from sora_jax.errors import InputError
from sora_jax.evaluation import cache_adherence as ca
from sora_jax.sampling import generate as gen

STEPS = 4
# Reuse whenever the guards allow (relative change is never this large); warm-up 1, so calls 1-3 reuse.
ALWAYS = "cache:threshold=1e6,warmup_steps=1,max_cached=3"
WINDOW = (0.9, 1.0)


def test_settings_parse():
  settings = ca.parse_settings(f"window:0.5,1.0; {ALWAYS}+window:0.9,1.0 cache:0.1")
  assert [s.name for s in settings] == ["plain", "window:0.5,1.0", f"{ALWAYS}+window:0.9,1.0", "cache:0.1"]
  plain, window, both, short = settings
  assert plain.pipeline_kwargs() == {"cache": block_cache.CacheConfig(), "cfg_window": ()}
  assert window.cache == block_cache.CacheConfig() and window.cfg_window == (0.5, 1.0)
  assert both.cache == block_cache.CacheConfig(threshold=1e6, warmup_steps=1, max_cached=3)
  assert both.cfg_window == WINDOW
  assert short.cache == block_cache.CacheConfig(threshold=0.1) and short.cfg_window == ()
  assert ca.parse_setting("config").pipeline_kwargs() == {"cache": None, "cfg_window": None}
  assert [s.name for s in ca.parse_settings(ca.DEFAULT_SETTINGS)] == list(ca.DEFAULT_SETTINGS)


@pytest.mark.parametrize(
  "text, match",
  [
    ("cache:threshold=0.1,depth=2", "unknown cache key 'depth'"),
    ("cache:threshold=0", "threshold > 0"),
    ("cache:0.1,max_cached=0", "'0.1' is not key=value"),  # the shorthand takes a threshold alone
    ("cache:threshold=x", "threshold='x' is not a number"),
    ("cache:threshold=0.1,max_cached=0", "max_cached"),
    ("window:0.8,0.2", "0 <= lo <= hi <= 1"),
    ("window:0,1", "'plain'"),
    ("windows:0.3,1.0", "expected plain, config"),
    ("cache:0.1+cache:0.2", "each at most once"),
  ],
)
def test_bad_settings_are_clear(text, match):
  with pytest.raises(InputError, match=match):
    ca.parse_setting(text)


def test_duplicate_settings_are_an_error():
  with pytest.raises(InputError, match="named twice: cache:0.1"):
    ca.parse_settings("cache:0.1 plain cache:0.1")


def _result(name, forwards, correct_all, accuracy_all=None):
  accuracy = float(np.mean(correct_all)) if accuracy_all is None else accuracy_all
  return {
    "setting": name,
    "forwards_per_video": forwards,
    **{f"accuracy_{a}": accuracy for a in ca.ATTRIBUTES},
    "per_prompt": [{"correct": {"all": c}} for c in correct_all],
  }


def test_comparison_arithmetic():
  plain = _result("plain", 40.0, [True] * 50 + [False] * 50)
  # 2x fewer, one prompt lost: -1 point, meets the target.
  a = _result("a", 20.0, [True] * 49 + [False] * 51)
  # 2.5x fewer but 3 points lost (4 lost, 1 gained).
  b = _result("b", 16.0, [True] * 46 + [False] * 4 + [True] + [False] * 49)
  # 1.9x fewer, no loss: meets it, but a does fewer forwards.
  c = _result("c", 40.0 / 1.9, [True] * 50 + [False] * 50)
  # 1.7x fewer: short of 1.8x.
  d = _result("d", 40.0 / 1.7, [True] * 50 + [False] * 50)
  results = [plain, a, b, c, d]
  ca.compare_with_plain(results)
  assert plain["vs_plain"] == {
    "forwards_reduction": 1.0,
    "delta_points": dict.fromkeys(ca.ATTRIBUTES, 0.0),
    "lost": 0,
    "gained": 0,
    "meets_target": False,
  }
  assert a["vs_plain"]["forwards_reduction"] == 2.0 and a["vs_plain"]["delta_points"]["all"] == -1.0
  assert (b["vs_plain"]["lost"], b["vs_plain"]["gained"], b["vs_plain"]["delta_points"]["all"]) == (4, 1, -3.0)
  assert [r["vs_plain"]["meets_target"] for r in results] == [False, True, False, True, False]
  assert ca.best_setting(results) == "a"
  assert ca.best_setting([plain, b, d]) is None


def test_report_on_the_tiny_workdir(pipe):
  both_name = f"{ALWAYS}+window:{WINDOW[0]},{WINDOW[1]}"
  report = ca.run(
    pipe, ca.parse_settings(both_name), max_prompts=2, batch_size=2, seed=5, num_steps=STEPS, progress=None
  )
  assert report["num_prompts"] == 2 and report["target"]["forwards_reduction"] == ca.TARGET_REDUCTION
  assert set(report["hardware"]) >= {"cpu", "load_average", "backend"} and report["load_1min_end"] is not None
  plain, both = report["settings"]  # plain is measured first, added when not asked for
  assert (plain["setting"], both["setting"]) == ("plain", both_name)
  for r in report["settings"]:
    assert r["num_videos"] == 2 and len(r["per_prompt"]) == 2 and len(r["calls"]) == 1
    assert all(0.0 <= r[f"accuracy_{a}"] <= 1.0 for a in ca.ATTRIBUTES)
    assert r["seconds"] > 0 and r["seconds_per_video_after_first"] is None  # one sampling call only
    assert [p["seed"] for p in r["per_prompt"]] == [5, 6]  # the same prompts and seeds in every setting
    assert r["model_calls"] == gen.model_evals("euler", STEPS)
  assert [p["prompt"] for p in both["per_prompt"]] == [p["prompt"] for p in plain["per_prompt"]]

  # plain: the sampler's count, 2 forwards (cond + uncond) per model call, nothing cached.
  assert plain["forwards_per_video"] == 2 * gen.model_evals("euler", STEPS) and plain["cached_calls"] == 0
  assert plain["cache"]["threshold"] == 0.0 and plain["cfg_window"] == []
  assert plain["vs_plain"]["forwards_reduction"] == 1.0
  # Always-reuse cache: call 0 computes (warm-up 1), calls 1-3 reuse, each at 1/depth of a forward; guided
  # calls (in the window) count both halves, the others the conditional half alone.
  depth = pipe.config.dit.depth
  times = gen.model_call_times(pipe.components.process, "euler", STEPS, pipe.components.denoiser.num_tokens)
  guided = (times / 1000.0 >= WINDOW[0]) & (times / 1000.0 <= WINDOW[1])
  assert 0 < guided.sum() < STEPS
  cost = np.where(np.arange(STEPS) == 0, 1.0, 1.0 / depth)
  assert both["cached_calls"] == STEPS - 1
  assert both["forwards_per_video"] == pytest.approx(float(np.sum(np.where(guided, 2, 1) * cost)))
  assert both["cache"]["threshold"] == 1e6 and both["cfg_window"] == list(WINDOW)
  assert both["forwards_per_video"] < plain["forwards_per_video"]
  assert both["vs_plain"]["forwards_reduction"] == pytest.approx(
    plain["forwards_per_video"] / both["forwards_per_video"],
    abs=1e-3,  # stored rounded to 3 decimals
  )

  json.loads(json.dumps(report))  # JSON-able as the tool writes it
  table = ca.format_table(report)
  assert len(table.splitlines()) == 1 + 2 + 2 and both_name in table


def test_tool_writes_the_report(run_tool, workdir, tmp_path):
  """The thin main end to end (one setting, one prompt: the sampler compiles once)."""
  out = tmp_path / "report.json"
  result = run_tool(
    "tools/benchmarks/cache_adherence.py",
    f"--workdir={workdir}",
    "--settings=plain",
    "--max_prompts=1",
    "--batch_size=1",
    "--num_steps=3",  # the tiny config's is 2: the flag reaches the sampler
    f"--out={out}",
  )
  report = json.loads(out.read_text())
  assert report["sampling"]["num_steps"] == 3 and report["workdir"] == os.path.abspath(workdir)
  assert [r["setting"] for r in report["settings"]] == ["plain"] and report["num_prompts"] == 1
  assert report["settings"][0]["forwards_per_video"] == 2 * 3 and report["settings"][0]["model_calls"] == 3
  assert "plain" in result.stdout and f"wrote {out}" in result.stdout


def test_max_prompts_spreads_over_the_canonical_list():
  from sora_jax.evaluation import adherence

  prompts = adherence.all_prompts()
  assert adherence.spread_prompts(prompts, 0) == prompts and adherence.spread_prompts(prompts, 200) == prompts
  few = adherence.spread_prompts(prompts, 21)  # every 5th of 105
  assert len(few) == 21 and few[0] == prompts[0] and few[1] == prompts[5]
  assert len(adherence.spread_prompts(prompts, 2)) == 2  # what the tiny-workdir test samples
