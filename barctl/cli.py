"""The `barctl` command line: parse, call, render. No logic lives here."""

from __future__ import annotations

import errno
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import click
from rich.console import Console
from rich.markup import escape

from barctl import __version__
from barctl.errors import BarctlError, ManifestError

if TYPE_CHECKING:
    from barctl.engine.apply import ApplyResult
    from barctl.engine.plan import Plan
    from barctl.engine.project import Project

console = Console(highlight=False, soft_wrap=True)
errors = Console(stderr=True, highlight=False, soft_wrap=True)

MANIFEST = click.Path(exists=False, dir_okay=False, path_type=Path)


class Command(click.Command):
    """Turns BarctlError into a clean message (JSON on stdout under --json) and exit status 1, never a traceback."""

    def invoke(self, ctx: click.Context):
        try:
            try:
                return super().invoke(ctx)
            except OSError as error:
                if error.errno not in (errno.ENOSPC, errno.EDQUOT):
                    raise
                place = f" ({error.filename})" if error.filename else ""
                raise BarctlError(f"no space left on the device{place}: free some and run the command again; "
                                  "every node finished before is kept") from None
        except BarctlError as error:
            if ctx.params.get("as_json"):
                _print_json_error(str(error), error.issues if isinstance(error, ManifestError) else [])
            else:
                errors.print(f"[bold red]Error:[/] {escape(str(error))}")
            sys.exit(1)


class Group(click.Group):
    """Usage errors exit 1, as Terraform's do (click's default is 2), so that
    `--detailed-exitcode` 2 means changes and nothing else; under --json they print as JSON."""

    def make_context(self, info_name, args, parent=None, **extra):
        with _usage_errors("--json" in args):
            return super().make_context(info_name, args, parent, **extra)

    def invoke(self, ctx: click.Context):
        with _usage_errors("--json" in [*getattr(ctx, "_protected_args", []), *ctx.args]):
            return super().invoke(ctx)


@contextmanager
def _usage_errors(as_json: bool) -> Iterator[None]:
    try:
        yield
    except click.UsageError as error:
        if as_json:
            _print_json_error(error.format_message(), [])
            sys.exit(1)
        error.exit_code = 1  # type: ignore[misc]  # click declares it on the class; this error alone exits 1
        raise


def _print_json_error(message: str, issues: list) -> None:
    console.print_json(data={"error": message, "errors": [vars(i) for i in issues]})


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="barctl")
@click.option("-v", "--verbose", count=True,
              help="Also show the libraries' warnings (transformers, datasets, the hub); -vv adds debug records.")
@click.option("-q", "--quiet", is_flag=True, help="Print nothing but errors.")
@click.option("--log-file", type=click.Path(dir_okay=False, path_type=Path), metavar="FILE",
              help="Append a log to FILE: every node's progress and the libraries' warnings.")
def main(verbose: int, quiet: bool, log_file: Path | None) -> None:
    """Declarative Branch-Adapt-Route (BAR) post-training.

    One YAML manifest declares an anchor model, domain experts and their training
    stages, routing and the output; barctl plans and builds only what changed, and
    writes a Mixture-of-Experts checkpoint that stock transformers loads.
    """
    from barctl.logs import setup

    if verbose and quiet:
        raise click.UsageError("-v and -q exclude each other")
    setup(-1 if quiet else verbose, log_file, console)
    console.quiet = quiet


@main.command(cls=Command)
@click.argument("manifest", type=MANIFEST)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def validate(manifest: Path, as_json: bool) -> None:
    """Check a manifest and report every problem at once, with its YAML path and line."""
    from barctl.manifest.recipe import load_recipe

    try:
        recipe = load_recipe(manifest)
    except ManifestError as error:
        if as_json:
            console.print_json(data={"valid": False, "errors": [vars(i) for i in error.issues]})
            sys.exit(1)
        raise
    if as_json:
        console.print_json(data={"valid": True, "errors": []})
    else:
        experts = ", ".join(e.name for e in recipe.experts)
        console.print(f"[green]{manifest} is valid:[/] {len(recipe.experts)} experts ({experts}).")


@main.command(cls=Command)
@click.argument("manifest", type=MANIFEST)
@click.option("--out", "out", type=click.Path(dir_okay=False, path_type=Path),
              help="Save the plan to this file; `barctl apply FILE` then runs exactly it.")
@click.option("--target", "targets", multiple=True, metavar="NODE",
              help="Plan only this node and what it depends on (repeatable).")
@click.option("--replace", "replace", multiple=True, metavar="NODE",
              help="Rebuild this node even if it is up to date (repeatable).")
@click.option("--detailed-exitcode", is_flag=True,
              help="Exit 0 when there are no changes, 1 on error, 2 when there are changes.")
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON.")
def plan(manifest: Path, out: Path | None, targets: tuple[str, ...], replace: tuple[str, ...],
         detailed_exitcode: bool, as_json: bool) -> None:
    """Show what apply would build, rebuild, repair or remove, and why."""
    from barctl.engine.project import Project
    from barctl.render import print_plan

    project = Project.load(manifest)
    the_plan = project.plan(list(targets), list(replace))
    if out is not None:
        the_plan.save(out)
    if as_json:
        console.print_json(data={**the_plan.to_dict(), "counts": the_plan.counts(), "warnings": project.warnings})
    else:
        _print_warnings(project)
        print_plan(console, the_plan, f"{project.recipe.name} ({manifest})")
        if out is not None:
            console.print(f"\nSaved the plan to {out}. Run it with: barctl apply {out}")
    if detailed_exitcode and the_plan.has_changes:
        sys.exit(2)


@main.command(cls=Command)
@click.argument("target", type=MANIFEST)
@click.option("--auto-approve", is_flag=True, help="Apply without asking for approval.")
@click.option("--target", "targets", multiple=True, metavar="NODE",
              help="Build only this node and what it depends on (repeatable).")
@click.option("--replace", "replace", multiple=True, metavar="NODE",
              help="Rebuild this node even if it is up to date (repeatable).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON (needs --auto-approve "
              "unless TARGET is a saved plan).")
@click.option("--push", is_flag=True, help="Upload what is built to the manifest's store.remote.")
def apply(target: Path, auto_approve: bool, targets: tuple[str, ...], replace: tuple[str, ...],
          as_json: bool, push: bool) -> None:
    """Build what the plan says: TARGET is a manifest, or a plan saved with `plan --out`."""
    from barctl.manifest.recipe import load_recipe
    from barctl.render import apply_summary

    saved = _saved_plan(target)
    if saved is not None and (targets or replace):
        raise BarctlError("--target and --replace belong to `barctl plan` when applying a saved plan")
    manifest = Path(saved.manifest) if saved else target
    load_recipe(manifest)  # a broken manifest is reported before anything is written
    project, result = _apply(manifest, saved, list(targets), list(replace), auto_approve, as_json, push)
    if as_json:
        console.print_json(data=vars(result))
    elif result.built or result.rebuilt or result.removed:
        console.print(apply_summary(len(result.built), len(result.rebuilt), len(result.removed)))
        console.print(f"Output: {project.recipe.output_dir}")


@main.command("eval", cls=Command)
@click.argument("manifest", type=MANIFEST)
@click.option("--auto-approve", is_flag=True, help="Build what the evaluations need without asking.")
@click.option("--json", "as_json", is_flag=True, help="Print the scores as JSON.")
def evaluate(manifest: Path, auto_approve: bool, as_json: bool) -> None:
    """Run the manifest's evaluations (building what they need) and print the table."""
    from barctl.engine.graph import eval_node_ids
    from barctl.evaluate.results import eval_intervals, eval_scores, routing_report, small_sample_warning
    from barctl.manifest.recipe import load_recipe

    recipe = load_recipe(manifest)
    if not recipe.evals:
        raise BarctlError(f"{manifest} declares no evals")
    project, _ = _apply(manifest, None, eval_node_ids(recipe), [], auto_approve, as_json)
    entries = project.lockfile.entries
    if as_json:
        console.print_json(data={"scores": eval_scores(entries), "ci95": eval_intervals(entries),
                                 "routing": routing_report(entries),
                                 "routing_top1": routing_report(entries, "routing_top1"),
                                 "routing_entropy": routing_report(entries, "routing_entropy"),
                                 "warnings": [w for w in [small_sample_warning(entries)] if w]})
    else:
        _print_evaluations(project)


def _apply(manifest: Path, saved: Plan | None, targets: list[str], replace: list[str], auto_approve: bool,
           quiet: bool, push: bool = False) -> tuple[Project, ApplyResult]:
    """Plan (or take the saved plan), ask, run; print the evaluations (also when a node failed)."""
    from barctl.engine.apply import ApplyResult, apply_plan, check_plan_is_current
    from barctl.engine.lock import StateLock
    from barctl.engine.project import Project
    from barctl.logs import LoggedReporter
    from barctl.render import ConsoleReporter, print_plan

    with StateLock(manifest.resolve().parent / ".barctl") as state:
        state.acquire(f"barctl apply {manifest}")
        project = Project.load(manifest)
        project.lockfile.clear_stray_temp_files()
        if not quiet:
            _print_warnings(project)
        if saved is not None:
            check_plan_is_current(project, saved)
            the_plan = saved
        else:
            the_plan = project.plan(targets, replace)
            if not quiet:
                print_plan(console, the_plan, f"{project.recipe.name} ({manifest})")
            if the_plan.has_changes and not auto_approve:
                _ask_approval()
        if not the_plan.has_changes:
            return project, ApplyResult()
        reporter = LoggedReporter([a.node_id for a in the_plan.to_run], None if quiet else ConsoleReporter(console),
                                  the_plan.costs)
        if not quiet:
            console.print()
        try:
            result = apply_plan(project, the_plan, reporter, push)
        finally:
            if not quiet:
                _print_evaluations(project, only_if_run=the_plan)
    return project, result


def _print_warnings(project: Project) -> None:
    for warning in project.warnings:
        console.print(f"[yellow]Warning:[/] {escape(warning)}")


def _print_evaluations(project: Project, only_if_run: Plan | None = None) -> None:
    from barctl.render import print_evaluations

    recipe = project.recipe
    if not recipe.evals:
        return
    if only_if_run is not None and not any(a.kind in ("eval", "gates") for a in only_if_run.to_run):
        return
    console.print()
    print_evaluations(console, list(recipe.evals["domains"]), ["anchor", *(e.name for e in recipe.experts)],
                      project.lockfile.entries)


def _saved_plan(target: Path):
    """The plan saved in `target`, or None when `target` is a manifest."""
    from barctl.engine.plan import Plan

    if not target.is_file():
        raise BarctlError(f"no such file: {target}")
    head = target.read_bytes()[:1].strip()
    return Plan.load(target) if head == b"{" else None


def _ask_approval() -> None:
    if not sys.stdin.isatty():
        raise BarctlError("apply needs approval: run it in a terminal, or pass --auto-approve")
    console.print("\nDo you want to perform these actions? Only 'yes' will be accepted to approve.")
    answer = click.prompt("  Enter a value", default="", show_default=False)
    if answer.strip() != "yes":
        raise BarctlError("apply cancelled")


@main.command(cls=Command)
@click.argument("manifest", type=MANIFEST)
@click.option("--json", "as_json", is_flag=True, help="Print the lockfile's entries as JSON.")
def show(manifest: Path, as_json: bool) -> None:
    """Show what is built: the lockfile, readably."""
    from barctl.engine.lock import Lockfile
    from barctl.manifest.recipe import load_recipe
    from barctl.render import print_lock

    recipe = load_recipe(manifest)
    lockfile = Lockfile.read(recipe.lockfile, recipe.manifest_path.name, recipe.root)
    if as_json:
        console.print_json(data=lockfile.entries)
    else:
        console.print(f"{recipe.lockfile}:")
        print_lock(console, lockfile.entries)


@main.command(cls=Command)
@click.argument("manifest", type=MANIFEST)
@click.option("--format", "fmt", type=click.Choice(["mermaid", "dot"]), default="mermaid",
              show_default=True, help="Graph language.")
def graph(manifest: Path, fmt: str) -> None:
    """Print the build graph as mermaid or graphviz dot."""
    from barctl.engine.project import Project
    from barctl.render import graph_text

    click.echo(graph_text(Project.load(manifest).graph, fmt))


@main.command(cls=Command)
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path), default=Path("."))
def init(directory: Path) -> None:
    """Write a starter project into DIRECTORY (default: here): a manifest with two experts,
    example data, a tokenizer, .gitignore and a README. Existing files are never overwritten."""
    from barctl.scaffold import MANIFEST, init_project

    for path in init_project(directory):
        console.print(f"  wrote {path}")
    console.print(f"Next: [bold]barctl plan {directory / MANIFEST}[/], then "
                  f"[bold]barctl apply {directory / MANIFEST} --auto-approve[/]")


@main.command(cls=Command)
@click.argument("manifest", type=MANIFEST)
@click.option("--json", "as_json", is_flag=True, help="Print what was removed as JSON.")
def gc(manifest: Path, as_json: bool) -> None:
    """Remove artifacts of the local store that no lockfile entry references."""
    from barctl.engine.lock import StateLock
    from barctl.engine.project import Project
    from barctl.render import human_size

    with StateLock(manifest.resolve().parent / ".barctl") as state:
        state.acquire(f"barctl gc {manifest}")
        project = Project.load(manifest)
        removed, freed = project.store.prune({entry["key"] for entry in project.lockfile.entries.values()})
    if as_json:
        console.print_json(data={"removed": removed, "bytes": freed})
    else:
        console.print(f"Removed {len(removed)} unreferenced artifacts ({human_size(freed)}).")


@main.command("force-unlock", cls=Command)
@click.argument("lock_id")
@click.option("-C", "--project-dir", type=click.Path(file_okay=False, path_type=Path), default=Path("."),
              show_default=True, help="The directory of the manifest.")
def force_unlock(lock_id: str, project_dir: Path) -> None:
    """Release the state lock left by a killed apply (LOCK_ID is printed in the error)."""
    from barctl.engine.lock import force_unlock as unlock

    holder = unlock(project_dir / ".barctl", lock_id)
    console.print(f"Released the state lock held by {holder.get('command', '?')} since {holder.get('since', '?')}.")


if __name__ == "__main__":
    main()
