"""The report's files as one set: report.json, report.md, report.csv and the plots, saved together and read back.

Everything is rendered in memory first, every file carries the same run id, and the files are saved as one set
with a manifest (``alexnet_zoo.manifest``): after an interrupted run this project's readers see the previous
report or the new one, never a mix, and ``--compare`` refuses a folder whose files do not belong together.
"""
import dataclasses
import json
import uuid
from pathlib import Path
from typing import Dict

from alexnet_zoo.files import PathLike
from alexnet_zoo.manifest import save_set, verify

from benchmarks.report.markdown import render_csv, render_markdown
from benchmarks.report.plots import PLOTS, render_plots
from benchmarks.report.schema import Report, decode, encode, plain

REPORT_FILES = ('report.md', 'report.csv', *PLOTS)


def new_run_id() -> str:
    """The id every file of one report carries."""
    return uuid.uuid4().hex[:12]


def write_report(report: Report, output_dir: PathLike) -> Dict[str, Path]:
    """Render every file in memory with the report's run id (a new one if it has none), then save them as one set;
    returns name -> path. report.json is the schema's encoding of ``report``; the other files are rendered from
    the same plain values."""
    output_dir = Path(output_dir)
    if report.run_id is None:
        report = dataclasses.replace(report, run_id=new_run_id())
    values = plain(report)
    files = {'report.json': encode(report).encode(),
             'report.md': render_markdown(values).encode(),
             'report.csv': render_csv(values).encode()}
    files.update(render_plots(values))

    def write(staging: Path) -> None:
        for name, data in files.items():
            (staging / name).write_bytes(data)

    save_set(output_dir, write, {'kind': 'benchmark report', 'run_id': report.run_id,
                                 'created_at': report.created_at})
    return {name: output_dir / name for name in files}


def read_report(path: PathLike, what: str = '--compare') -> Report:
    """An earlier report.json, typed and checked (``results.decode``); one clear line (naming ``what`` gave it) if
    it is not one, or if its folder mixes the files of two reports."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'{what} file not found: {path}')
    try:  # first: a save interrupted while moving its files is finished, a mixed folder refused
        manifest = verify(path.parent, [path.name, *REPORT_FILES]) if path.name == 'report.json' else None
    except ValueError as e:
        raise ValueError(f'{what} {path} is in a folder that mixes reports: {e}') from None
    try:
        report = decode(json.loads(path.read_text()))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f'{what} {path} is not a benchmark report (not JSON: {e})') from None
    except ValueError as e:
        raise ValueError(f'{what} {path} is not a benchmark report ({e})') from None
    if manifest is not None and manifest.get('run_id') != report.run_id:
        raise ValueError(f'{what} {path} is in a folder that mixes reports: report.json is run '
                         f'{report.run_id}, its manifest.json run {manifest.get("run_id")}')
    return report
