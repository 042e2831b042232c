"""What a finished run prints last: its final eval metrics with their units,
where its checkpoints, samples and metrics are, and what to run next.

The task names its metrics' units and the next commands (Task.metric_units,
Task.next_commands); a pipeline's summary has a block per stage and the
commands of its last stage on the pipeline's directory, which stands for it.
"""

from latentlm import tasks
from latentlm.core import workdir as workdir_lib
from latentlm.tasks import pipeline


def _value(value: float, scale: float) -> str:
  """Four significant digits; six for a percentage, so that 99.997% does
  not read as 100%."""
  return f'{value:.6g}' if scale != 1 else f'{value:.4g}'


def metric_lines(config, metrics: dict) -> list[str]:
  """`name  value  unit` of each metric the task gives a unit, aligned."""
  units = tasks.task_class(config).metric_units(config)
  rows = [(name, _value(unit.scale * metrics[name], unit.scale), unit.text)
          for name, unit in units.items() if name in metrics]
  if not rows:
    return []
  name_width = max(len(name) for name, _, _ in rows)
  value_width = max(len(value) for _, value, _ in rows)
  return [f'{name:<{name_width}}  {value:>{value_width}}  {unit}'
          for name, value, unit in rows]


def _indented(lines) -> list[str]:
  return [f'  {line}' for line in lines]


def stage_block(config, workdir_path: str, metrics: dict) -> list[str]:
  """A run's final eval metrics and its files."""
  workdir = workdir_lib.Workdir(workdir_path)
  return [f'{config.task} in {workdir.path}',
          f'  final eval ({config.data.eval_split} split):',
          *_indented(_indented(metric_lines(config, metrics))),
          f'  checkpoints  {workdir.checkpoints}',
          f'  samples      {workdir.samples_path}',
          f'  metrics      {workdir.metrics_path}']


def _next(config, workdir_path: str) -> list[str]:
  commands = tasks.task_class(config).next_commands(config, workdir_path)
  return ['next:', *_indented(commands)]


def run_summary(config, workdir_path: str, metrics: dict) -> str:
  """The summary of a finished single-stage run."""
  return '\n'.join(['=== run finished',
                    *stage_block(config, workdir_path, metrics),
                    *_next(config, workdir_path)])


def pipeline_summary(config, pipeline_path: str, stage_metrics: dict) -> str:
  """The summary of a finished pipeline: `stage_metrics` is stage name ->
  its final eval metrics."""
  lines = [f'=== pipeline finished: {pipeline_path}']
  for name in pipeline.stage_names(config):
    stage_config = pipeline.stage_config(config, name, pipeline_path)
    lines += stage_block(stage_config,
                         pipeline.stage_path(pipeline_path, name),
                         stage_metrics[name])
  last = pipeline.stage_config(config, pipeline.last_stage(config),
                               pipeline_path)
  return '\n'.join(lines + _next(last, pipeline_path))
