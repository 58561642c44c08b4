"""Nipype interfaces: thin wrappers that call the tested functions in :mod:`.extract`."""

from __future__ import annotations

import json

from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    SimpleInterface,
    TraitedSpec,
    isdefined,
    traits,
)

from neurossm_app.config import CleaningSettings
from neurossm_app.interrupts import uninterrupted
from neurossm_app.participant import extract


class _RunInputSpec(BaseInterfaceInputSpec):
    bold_file = File(
        exists=True,
        mandatory=True,
        hash_files=False,
        desc="4D preprocessed BOLD image (or an fsLR 91k dtseries); cached by bold_fingerprint, not by "
        "hashing its bytes",
    )
    bold_fingerprint = traits.Str(mandatory=True, desc="identity of the BOLD file's content (cache key)")
    confounds_file = File(
        exists=True,
        desc="fMRIPrep confounds TSV, if any; its content keys the cache (load_confounds reads it)",
    )
    atlas_file = File(exists=True, mandatory=True, desc="integer atlas in the runs' space (or fsLR dlabel)")
    indices = traits.List(traits.Int, mandatory=True, desc="label values, in column order")
    names = traits.List(traits.Str, mandatory=True, desc="ROI names, in column order")
    repetition_time = traits.Float(mandatory=True, desc="seconds per volume")
    settings = traits.Dict(mandatory=True, desc="CleaningSettings as a dict")


class _ExtractRunInputSpec(_RunInputSpec):
    mask_file = File(exists=True, mandatory=True, desc="brain mask on the BOLD grid")
    n_threads = traits.Int(1, usedefault=True, nohash=True, desc="threads that inflate the BOLD file")


class _ExtractRunOutputSpec(TraitedSpec):
    atlas_file = File(exists=True, desc="atlas on the BOLD grid (nearest neighbour)")
    raw_file = File(exists=True, desc="raw parcel means (volumes x ROIs), .npy")
    coverage_file = File(exists=True, desc="TSV of per-ROI brain-mask coverage")
    clean_file = File(exists=True, desc="TSV of denoised parcel signals")
    metadata_file = File(exists=True, desc="JSON with regressors, censored volumes, excluded ROIs")


class ExtractRun(SimpleInterface):
    """Resample the atlas, take parcel means within the mask and clean them, for one run."""

    input_spec = _ExtractRunInputSpec
    output_spec = _ExtractRunOutputSpec

    def _run_interface(self, runtime):
        files = extract.extract_run(
            mask_file=self.inputs.mask_file,
            n_threads=self.inputs.n_threads,
            **_run_arguments(self.inputs, runtime),
        )
        self._results.update({name: str(path) for name, path in files._asdict().items()})
        return runtime


class ExtractCiftiRun(SimpleInterface):
    """Take parcel means over a dtseries' grayordinates and clean them, for one CIFTI run."""

    input_spec = _RunInputSpec  # no mask: a dtseries holds the grayordinates only
    output_spec = _ExtractRunOutputSpec

    def _run_interface(self, runtime):
        from neurossm_app.participant.cifti import extract_cifti_run

        files = extract_cifti_run(**_run_arguments(self.inputs, runtime))
        self._results.update({name: str(path) for name, path in files._asdict().items()})
        return runtime


def _run_arguments(inputs, runtime) -> dict:
    """The arguments both extraction functions take, from a :class:`_RunInputSpec`'s inputs."""
    return {
        "bold_file": inputs.bold_file,
        "atlas_file": inputs.atlas_file,
        "indices": inputs.indices,
        "names": inputs.names,
        "repetition_time": inputs.repetition_time,
        "settings": CleaningSettings(**inputs.settings),
        "out_dir": runtime.cwd,
        # the file the run was found with (fmriprep.py), not looked up again beside the BOLD
        "confounds_file": inputs.confounds_file if isdefined(inputs.confounds_file) else None,
    }


class _DerivativesSinkInputSpec(BaseInterfaceInputSpec):
    output_dir = traits.Str(mandatory=True, desc="OUTPUT_DIR")
    entities = traits.Dict(mandatory=True, desc="run entities (subject, session, task, run, ...)")
    atlas_label = traits.Str(mandatory=True, desc="atlas-<label> entity")
    atlas_file = traits.Str(mandatory=True, hash_files=False, desc="atlas file, for provenance")
    atlas_provenance = traits.Dict(desc="AtlasSource and AtlasSHA256 sidecar fields")
    repetition_time = traits.Float(mandatory=True, desc="seconds per volume")
    settings = traits.Dict(mandatory=True, desc="CleaningSettings as a dict")
    clean_file = File(exists=True, mandatory=True, desc="denoised parcel signals")
    coverage_file = File(exists=True, mandatory=True, desc="per-ROI coverage")
    metadata_file = File(exists=True, mandatory=True, desc="cleaning metadata JSON")
    sources = traits.List(traits.Str, hash_files=False, desc="input files, for provenance")
    run_metadata = traits.Dict(desc="sidecar fields of the run's input (BoldRun.metadata), added as they are")


class _DerivativesSinkOutputSpec(TraitedSpec):
    out_files = traits.List(File(exists=True), desc="written outputs")


class DerivativesSink(SimpleInterface):
    """Write one run's outputs to their BIDS-derivative names atomically."""

    input_spec = _DerivativesSinkInputSpec
    output_spec = _DerivativesSinkOutputSpec
    always_run = True  # outputs live outside the work directory; never trust a cached copy

    def _run_interface(self, runtime):
        with open(self.inputs.metadata_file) as handle:
            metadata = json.load(handle)
        settings = CleaningSettings(**self.inputs.settings)
        sidecar = extract.run_sidecar(
            self.inputs.repetition_time,
            self.inputs.atlas_label,
            self.inputs.atlas_file,
            settings,
            metadata,
            list(self.inputs.sources),
            dict(self.inputs.atlas_provenance or {}),
        )
        with uninterrupted():  # a signal waits until the run's three files are all written
            written = extract.write_run_outputs(
                self.inputs.output_dir,
                self.inputs.entities,
                self.inputs.atlas_label,
                self.inputs.clean_file,
                self.inputs.coverage_file,
                {**sidecar, **(self.inputs.run_metadata or {})},  # e.g. where an HCP run's TR was read
            )
        self._results["out_files"] = [str(p) for p in written]
        return runtime


class _ReportletsInputSpec(BaseInterfaceInputSpec):
    output_dir = traits.Str(mandatory=True, desc="OUTPUT_DIR")
    entities = traits.Dict(mandatory=True, desc="run entities (subject, session, task, run, ...)")
    atlas_label = traits.Str(mandatory=True, desc="atlas-<label> entity of the figure names")
    raw_file = File(exists=True, mandatory=True, desc="raw parcel means (volumes x ROIs), .npy")
    clean_file = File(exists=True, mandatory=True, desc="denoised parcel signals")
    coverage_file = File(exists=True, mandatory=True, desc="per-ROI coverage")
    metadata_file = File(exists=True, mandatory=True, desc="cleaning metadata JSON (censored volumes)")
    confounds_file = File(exists=True, desc="fMRIPrep confounds TSV, if any (framewise displacement)")
    atlas_file = File(exists=True, mandatory=True, desc="atlas on the BOLD grid")
    mask_file = File(exists=True, desc="brain mask (a CIFTI run has none: no coverage figure)")
    indices = traits.List(traits.Int, mandatory=True, desc="label values, in column order")
    fd_threshold = traits.Either(None, traits.Float, desc="censoring threshold, for the motion plot")


class _ReportletsOutputSpec(TraitedSpec):
    out_files = traits.List(File(exists=True), desc="SVG figures")


class RunReportlets(SimpleInterface):
    """Draw one run's report figures into ``OUTPUT_DIR/sub-X/figures``."""

    input_spec = _ReportletsInputSpec
    output_spec = _ReportletsOutputSpec
    always_run = True

    def _run_interface(self, runtime):
        from neurossm_app.reports.participant import write_run_reportlets

        with open(self.inputs.metadata_file) as handle:
            censored = json.load(handle)["CensoredVolumes"]
        written = write_run_reportlets(
            self.inputs.output_dir,
            self.inputs.entities,
            self.inputs.raw_file,
            self.inputs.clean_file,
            self.inputs.coverage_file,
            self.inputs.confounds_file if isdefined(self.inputs.confounds_file) else None,
            self.inputs.atlas_file,
            self.inputs.mask_file if isdefined(self.inputs.mask_file) else None,
            list(self.inputs.indices),
            censored,
            self.inputs.fd_threshold,
            atlas_label=self.inputs.atlas_label,
        )
        self._results["out_files"] = [str(p) for p in written]
        return runtime
