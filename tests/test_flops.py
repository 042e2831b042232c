"""Model FLOPs against XLA's own count and against the model's parameters."""

import re
import types

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import helpers
from latentlm import bench
from latentlm import tasks
from latentlm.core import sharding
from latentlm.core.errors import UserError
from latentlm.tasks import flops
from latentlm.training import trainer as trainer_lib


def _matmul_heavy_config():
  """d_model 256 and seq 128: matmuls dominate XLA's count.

  XLA counts about 7.5% more than model FLOPs here: the masked half of
  causal attention (~3.5%), the head's columns that pad the vocabulary
  (~2%), and elementwise ops (norms, RoPE, softmax, SwiGLU, AdamW; ~2%, small
  as d_model is large against the per-feature elementwise work). Layers are
  unrolled because XLA counts a scan's body once.
  """
  config = helpers.load_config('token_lm', 'size=tiny')
  config.model.update(dict(d_model=256, num_heads=4, num_kv_heads=4,
                           head_dim=64, mlp_dim=768, num_layers=2,
                           scan_layers=False, max_len=128))
  config.data.seq_len = 128
  config.train.batch_size = 2
  config.mesh.update(dict(data=1, fsdp=1, tensor=1))
  return config


def xla_train_flops(config, task, tokens_shape) -> float:
  """XLA's count of `task`'s compiled train step on one device, for a
  batch of int32 tokens of `tokens_shape`."""
  trainer = trainer_lib.Trainer(config, task,
                          sharding.make_mesh(config.mesh, jax.devices()[:1]))
  batch = {'tokens': jax.ShapeDtypeStruct(tokens_shape, jnp.int32)}
  compiled = trainer.lower_train_step(trainer.abstract_state, batch).compile()
  return compiled.cost_analysis()['flops']


def test_train_flops_match_xla_cost_analysis():
  config = _matmul_heavy_config()
  task = tasks.get_task(config)
  xla_flops = xla_train_flops(
      config, task, (config.train.batch_size, config.data.seq_len + 1))
  model_flops = flops.train_flops_per_step(config)
  assert model_flops == pytest.approx(xla_flops, rel=0.1)
  # Counting what the program computes but the model does not need leaves
  # only the elementwise ops (~2%).
  seq_len, cfg = config.data.seq_len, task.model_config
  computed_per_token = (
      flops.transformer_flops_per_token(cfg, seq_len, causal=False)['train'] +
      flops.dense_flops_per_token(cfg.d_model * cfg.padded_vocab_size)['train'])
  computed = computed_per_token * config.train.batch_size * seq_len
  assert computed == pytest.approx(xla_flops, rel=0.03)


def _encoder_heavy_concept_lm(head, input_kind):
  """(stage-1 config, concept LM config) whose frozen encoder and token
  readout are each a large enough share of the step that leaving either out
  of the count shows against XLA's: long chunks (K=16), an encoder as wide
  and deep as the backbone, a narrow head. Layers are unrolled (XLA counts
  a scan's body once)."""
  ae = helpers.load_config('autoencoder', 'K=16,Dz=32')
  ae.model.update(d_model=128, mlp_dim=384, num_layers=2)
  config = helpers.load_config('concept_lm',
                               f'head={head},input={input_kind},size=tiny')
  config.model.update(num_layers=2, scan_layers=False, max_len=16)
  config.data.seq_len = 16
  config.head.update(hidden_dim=64, num_layers=2)
  config.token_loss_weight = 1.0
  config.train.batch_size = 2
  config.mesh.update(dict(data=1, fsdp=1, tensor=1))
  return ae, config


@pytest.mark.parametrize('head, input_kind', [('flow', 'tokens'),
                                              ('energy', 'latent')])
def test_concept_lm_train_flops_match_xla_cost_analysis(head, input_kind):
  ae, config = _encoder_heavy_concept_lm(head, input_kind)
  B, S, K = config.train.batch_size, config.data.seq_len, 16
  task = tasks.get_task(config, autoencoder=ae)
  xla_flops = xla_train_flops(config, task, (B, S + 1, K))
  model_flops = flops.train_flops_per_step(config, ae)
  assert model_flops == pytest.approx(xla_flops, rel=0.1)
  # The step runs the frozen encoder forward on every chunk of its rows of
  # S + 1, and the token readout at every position: a count without either
  # is off by more.
  encoder = B * (S + 1) * flops.encoder_flops_per_chunk(ae.model)['forward']
  readout = B * S * flops.token_readout_flops_per_position(config,
                                                           ae)['train']
  for left_out in (encoder, readout):
    assert model_flops - left_out != pytest.approx(xla_flops, rel=0.1)


def test_all_in_flops_add_the_stages_a_run_builds_on():
  ae = helpers.load_config('autoencoder')
  lm = helpers.load_config('concept_lm', 'head=flow')
  token_lm = helpers.load_config('token_lm', 'size=tiny')
  stage1 = ae.train.num_steps * flops.train_flops_per_step(ae)
  assert flops.upstream_flops(ae) == flops.upstream_flops(token_lm) == 0
  assert flops.upstream_flops(lm, ae) == stage1 > 0
  assert flops.all_in_flops(lm, 7, ae) == pytest.approx(
      stage1 + 7 * flops.train_flops_per_step(lm, ae))
  assert flops.all_in_flops(token_lm, 7) == 7 * flops.train_flops_per_step(
      token_lm)
  # Without `autoencoder`, the stage-1 workdir the config names is read.
  with pytest.raises(UserError, match='autoencoder_workdir is required'):
    flops.upstream_flops(lm)


def test_a_pipeline_sums_its_stages():
  config = helpers.load_config('shakespeare', 'distill=True')
  stages = config.stages
  assert 'head_distill' in stages
  total = sum(stage.train.num_steps * flops.train_flops_per_step(
      stage, stages.autoencoder, stages.concept_lm)
              for stage in stages.values())
  assert flops.pipeline_flops(config) == pytest.approx(total)


def _unknown_head(ae, lm):
  lm.head.name = 'vae'
  return lambda: flops.train_flops_per_step(lm, ae)


def _unknown_task(ae, lm):
  lm.task = 'vq_lm'
  return lambda: flops.all_in_flops(lm, 1, ae)


def _unknown_segmentation(ae, lm):
  ae.segment.kind = 'syllables'
  return lambda: flops.train_flops_per_step(lm, ae)


def _unknown_segmentation_upstream(ae, lm):
  ae.segment.kind = 'syllables'
  return lambda: flops.upstream_flops(lm, ae)


def _unknown_solver(ae, lm):
  lm.head.solver = 'rk4'
  return lambda: flops.flow_sample_flops_per_position(lm.head, 128, 32)


@pytest.mark.parametrize('make_call, message', [
    (_unknown_head,
     "head 'vae'; choose one of ['diffusion', 'energy', 'flow', 'gmm', "
     "'mse']"),
    (_unknown_task, "config.task='vq_lm' is not one of ('token_lm', "
                    "'autoencoder', 'concept_lm', 'head_distill')"),
    (_unknown_segmentation, "segmentation kind='syllables' is not one of "
                            "['entropy', 'fixed', 'sentences', 'word', "
                            "'words']"),
    (_unknown_segmentation_upstream, "segmentation kind='syllables'"),
    (_unknown_solver, "flow solver 'rk4'; it knows ['ab2', 'euler', 'heun']"),
])
def test_what_the_count_does_not_know_is_a_user_error(make_call, message):
  """Never a silent default: a new head priced as another would skew every
  equal-FLOPs study."""
  ae = helpers.load_config('autoencoder', 'Dz=32')
  lm = helpers.load_config('concept_lm', 'head=flow')
  call = make_call(ae, lm)
  with pytest.raises(UserError, match=re.escape(message)) as error:
    call()
  assert '\n' not in str(error.value)


def test_dense_flops_are_six_times_matmul_params():
  config = _matmul_heavy_config()
  task = tasks.get_task(config)
  params = nn.meta.unbox(jax.eval_shape(task.init, jax.random.key(0))[0])
  # Every matrix but the embedding table is a matmul weight; the head's
  # columns past vocab_size only pad it for sharding and are not model work.
  matmul_params = sum(
      np.prod(x.shape) for path, x in jax.tree_util.tree_leaves_with_path(params)
      if x.ndim >= 2 and jax.tree_util.keystr(path) != "['embed']")
  d_model, vocab_size = params['head'].shape[0], config.model.vocab_size
  matmul_params -= d_model * (params['head'].shape[1] - vocab_size)
  seq_len = config.data.seq_len
  attention = flops.attention_flops_per_token(
      seq_len, config.model.num_heads, config.model.head_dim)['train']
  per_token = flops.token_lm_flops_per_token(config.model, seq_len)['train']
  assert per_token - config.model.num_layers * attention == pytest.approx(
      6 * matmul_params)


@pytest.mark.parametrize('seq_len, num_heads, head_dim', [(16, 2, 8),
                                                          (64, 4, 32)])
def test_attention_flops(seq_len, num_heads, head_dim):
  q_LxHxK = jax.ShapeDtypeStruct((seq_len, num_heads, head_dim), jnp.float32)

  def scores_and_values(q_LxHxK, k_LxHxK, v_LxHxK):
    logits_HxLxL = jnp.einsum('LHK,SHK->HLS', q_LxHxK, k_LxHxK)
    return jnp.einsum('HLS,SHK->LHK', logits_HxLxL, v_LxHxK)

  xla_forward = jax.jit(scores_and_values).lower(
      q_LxHxK, q_LxHxK, q_LxHxK).compile().cost_analysis()['flops']
  full = flops.attention_flops_per_token(seq_len, num_heads, head_dim,
                                         causal=False)
  causal = flops.attention_flops_per_token(seq_len, num_heads, head_dim)
  assert full['forward'] * seq_len == pytest.approx(xla_forward, rel=1e-3)
  assert causal['forward'] == full['forward'] / 2
  assert causal['train'] == 3 * causal['forward']
  # Half is the large-L limit of the causal mask's allowed fraction.
  allowed = np.tril(np.ones((seq_len, seq_len))).mean()
  assert causal['forward'] == pytest.approx(full['forward'] * allowed,
                                            rel=1 / seq_len)


def test_mfu():
  assert flops.mfu(6e12, step_time_s=2.0, peak_flops_per_s=1e13) == 0.3


def test_device_peak_flops():
  assert flops.device_peak_flops(jax.devices()[0]) is None
  v5e = types.SimpleNamespace(platform='tpu', device_kind='TPU v5 lite')
  assert flops.device_peak_flops(v5e) == flops.TPU_PEAK_FLOPS['v5e']
  unknown = types.SimpleNamespace(platform='tpu', device_kind='TPU v99')
  assert flops.device_peak_flops(unknown) is None


def test_bench_train_reports_consistent_numbers(tmp_path, monkeypatch):
  monkeypatch.setattr(bench, 'MATMUL_SIZES', (256,))
  config = helpers.tiny_token_lm(str(tmp_path))
  config.train.batch_size = len(jax.devices())
  result = bench.bench_train(config, num_steps=2, data_batches=2)
  assert 0 < result['mfu'] < 1.5
  assert result['tokens_per_s'] == pytest.approx(
      config.train.batch_size * config.data.seq_len / result['step_time_s'])
  assert result['model_flops_per_step'] == flops.train_flops_per_step(config)
  # The nano model is elementwise-heavy, so XLA counts more than the model.
  assert (result['model_flops_per_step'] < result['xla_flops_per_step'] <
          3 * result['model_flops_per_step'])
  assert result['data_tokens_per_s'] > 0


def test_bench_train_counts_an_autoencoder(tmp_path, monkeypatch):
  # Its model config has no layer scan to unroll for XLA's count.
  monkeypatch.setattr(bench, 'MATMUL_SIZES', (256,))
  config = helpers.load_config('autoencoder', 'Dz=8')
  config.model.update(d_model=32, mlp_dim=64, num_layers=1)
  config.data.update(data_dir=str(tmp_path), seq_len=4)
  config.train.batch_size = len(jax.devices())
  result = bench.bench_train(config, num_steps=1, data_batches=1)
  assert result['model_flops_per_step'] == flops.train_flops_per_step(config)
  assert result['xla_flops_per_step'] > result['model_flops_per_step'] > 0


def test_train_loop_peak_is_the_chip_table_on_tpu_else_a_matmul():
  v5p = types.SimpleNamespace(platform='tpu', device_kind='TPU v5')
  assert trainer_lib.peak_flops_per_s([v5p] * 4) == 4 * flops.TPU_PEAK_FLOPS['v5p']
  assert 1e8 < trainer_lib.peak_flops_per_s(jax.devices()) < 1e14  # CPU FLOP/s


def test_bench_generate_streams_take_turns_and_the_quietest_pass_counts(
    monkeypatch):
  # Turns of GENERATE_TURN steps, every stream to its end, one untimed pass
  # then GENERATE_REPEATS timed ones, each from fresh streams. A fake clock
  # gives each pass its seconds a step per stream: the rates are those of
  # the pass with the least total (the third), not each stream's best.
  monkeypatch.setattr(bench, 'GENERATE_TURN', 2)
  monkeypatch.setattr(bench, 'GENERATE_REPEATS', 3)
  seconds_a_step = [{'a': 9, 'b': 9}, {'a': 2, 'b': 2}, {'a': 0.5, 'b': 3},
                    {'a': 1, 'b': 1}]
  clock, order = [0.0], []
  monkeypatch.setattr(bench.time, 'perf_counter', lambda: clock[0])

  def stream(name):
    def make_stream(num_steps):
      pass_index = sum(step == f'{name}:new' for step in order)
      order.append(f'{name}:new')
      for i in range(num_steps):
        clock[0] += seconds_a_step[pass_index][name]
        order.append(f'{name}{i}')
        yield i
    return make_stream
  rates = bench._quietest_steps_per_s([stream('a'), stream('b')], 5)
  one_pass = ['a:new', 'a0', 'a1', 'b:new', 'b0', 'b1', 'a2', 'a3', 'b2', 'b3',
              'a4', 'b4']
  assert order == one_pass * 4
  assert rates == [1.0, 1.0]


def test_bench_generate_reports_consistent_numbers(tmp_path, monkeypatch):
  import os  # pylint: disable=g-import-not-at-top
  from latentlm.data import corpus  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(bench, 'GENERATE_STEPS', 4)
  monkeypatch.setattr(bench, 'GENERATE_REPEATS', 1)
  lines = [f'line {i:03d}: to be, or not to be, that is it.\n'
           for i in range(100)]
  (tmp_path / 'a.txt').write_text(''.join(lines))
  config = helpers.load_config('shakespeare',
                               'size=nano,Dz=8,segment=fixed,K=2')
  for stage in config.stages.values():
    stage.data.update(name='files', files=f'{tmp_path}/*.txt',
                      data_dir=str(tmp_path / 'tfds'))
  config.stages.autoencoder.model.update(d_model=32, mlp_dim=64,
                                         num_layers=1, num_heads=2)
  result = bench.bench_generate(config, os.path.join(helpers.REPO, 'configs'))

  # Bytes per unit over the eval split, counted here: fixed chunks of K of
  # the bytes and the end-of-text token, which has no bytes.
  data = config.stages.concept_lm.data
  K = config.stages.autoencoder.segment.chunk_len
  num_bytes = sum(len(t) for t in corpus.split_texts(data, data.eval_split))
  assert result['bytes_per_token'] == pytest.approx(num_bytes /
                                                    (num_bytes + 1))
  assert result['bytes_per_concept'] == pytest.approx(
      num_bytes / -(-(num_bytes + 1) // K))
  assert result['concept_bytes_per_s'] == pytest.approx(
      result['concept_steps_per_s'] * result['bytes_per_concept'])
  assert result['ratio'] == pytest.approx(
      result['concept_bytes_per_s'] / result['token_bytes_per_s'])
  assert result['target_ratio'] == pytest.approx(
      0.8 * result['bytes_per_concept'] / result['bytes_per_token'])
  assert result['headless_ratio'] > 0
  parts = result['concept_step_parts_ms']
  assert sorted(parts) == ['backbone', 'decoder', 'head']
  assert all(ms > 0 for ms in parts.values())
