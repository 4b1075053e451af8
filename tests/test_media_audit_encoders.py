"""Pretrained encoders' failure paths: a checkpoint of another model, a torch device the machine
lacks, a text model folder that is missing or incomplete. The libraries are stand-ins raising
what timm, open_clip, torch and transformers raise there, so these run without the extras and
without weights."""

import sys
import types

import pytest

from jaxrec import features as jf
from jaxrec.errors import DataError

_MISMATCH = ("Error(s) in loading state_dict for ResNet:\n\tsize mismatch for fc.weight: copying a param with shape "
             "torch.Size([1000, 512]) from checkpoint, the shape in current model is torch.Size([1000, 2048]).")


class _Model:
    num_features = 8

    def __init__(self, device_error=None):
        self.device_error = device_error

    def eval(self):
        return self

    def to(self, device):
        if self.device_error is not None and device != "cpu":
            raise self.device_error
        return self


def _fake_timm(monkeypatch, create_model):
    timm = types.ModuleType("timm")
    timm.__version__ = "0.0-standin"
    timm.create_model = create_model
    data = types.ModuleType("timm.data")
    data.resolve_data_config = lambda config, model: {"input_size": (3, 8, 8)}
    data.create_transform = lambda **config: (lambda image: image)
    timm.data = data
    monkeypatch.setitem(sys.modules, "timm", timm)
    monkeypatch.setitem(sys.modules, "timm.data", data)


def test_a_timm_checkpoint_of_another_model_names_the_weights_file(monkeypatch, tmp_path):
    def create_model(name, **kwargs):
        raise RuntimeError(_MISMATCH)  # what torch's load_state_dict raises for another model's weights

    _fake_timm(monkeypatch, create_model)
    weights = tmp_path / "resnet18.pth"
    weights.write_bytes(b"weights of another model")
    with pytest.raises(DataError, match=r"resnet18\.pth, field 'weights': cannot load the weights file; found "
                                        r"RuntimeError: Error\(s\) in loading state_dict for ResNet:; expected a "
                                        r"checkpoint of timm's resnet50\.a1_in1k"):
        jf.make_encoder("image", "timm", weights=weights)


def test_a_torch_device_the_machine_lacks_is_named(monkeypatch):
    error = AssertionError("Torch not compiled with CUDA enabled")
    _fake_timm(monkeypatch, lambda name, **kwargs: _Model(device_error=error))
    with pytest.raises(DataError, match=r"field 'device': torch device not available; found cuda: AssertionError: "
                                        r"Torch not compiled with CUDA enabled"):
        jf.make_encoder("image", "timm", random_init=True, device="cuda")
    assert jf.make_encoder("image", "timm", random_init=True).dim == 8


def test_an_open_clip_checkpoint_of_another_model_names_the_weights_file(monkeypatch, tmp_path):
    open_clip = types.ModuleType("open_clip")
    open_clip.__version__ = "0.0-standin"

    def create_model_and_transforms(name, pretrained=None, **kwargs):
        raise RuntimeError(_MISMATCH.replace("ResNet", "CLIP"))

    open_clip.create_model_and_transforms = create_model_and_transforms
    monkeypatch.setitem(sys.modules, "open_clip", open_clip)
    weights = tmp_path / "vit_l.bin"
    weights.write_bytes(b"weights of another model")
    with pytest.raises(DataError, match=r"vit_l\.bin, field 'weights': cannot load the weights file; found "
                                        r"RuntimeError: Error\(s\) in loading state_dict for CLIP"):
        jf.make_encoder("image", "clip", weights=weights)


def _fake_sentence_transformers(monkeypatch, calls):
    module = types.ModuleType("sentence_transformers")
    module.__version__ = "0.0-standin"

    def model(path, device="cpu", local_files_only=False):
        calls.append(path)
        raise OSError(f"{path} does not appear to have a file named config.json. Checkout "
                      f"'https://huggingface.co/{path}/tree/None' for available files.")

    module.SentenceTransformer = model
    monkeypatch.setitem(sys.modules, "sentence_transformers", module)


def test_a_missing_text_model_folder_fails_before_loading_the_library(monkeypatch, tmp_path):
    calls = []
    _fake_sentence_transformers(monkeypatch, calls)
    imported = []
    real_import = __import__
    monkeypatch.setattr("builtins.__import__", lambda name, *args, **kwargs: (
        imported.append(name), real_import(name, *args, **kwargs))[1])
    with pytest.raises(DataError, match=r"nope, field 'model': text model folder not found; found no such folder"):
        jf.make_encoder("text", "minilm", model=tmp_path / "nope")
    assert "sentence_transformers" not in imported and calls == []


def test_an_incomplete_text_model_folder_is_named_without_a_traceback(monkeypatch, tmp_path):
    calls = []
    _fake_sentence_transformers(monkeypatch, calls)
    folder = tmp_path / "my-model"
    folder.mkdir()
    with pytest.raises(DataError, match=r"my-model, field 'model': cannot load the text model; found OSError: .*"
                                        r"does not appear to have a file named config\.json"):
        jf.make_encoder("text", "minilm", model=folder)
    assert calls == [str(folder)]


def test_a_local_text_model_folder_is_named_in_the_provenance_even_under_the_packaged_name(monkeypatch, tmp_path):
    module = types.ModuleType("sentence_transformers")
    module.__version__ = "0.0-standin"

    class Model:
        def __init__(self, path, device="cpu", local_files_only=False):
            self.path = path

        def get_sentence_embedding_dimension(self):
            return 4

    module.SentenceTransformer = Model
    monkeypatch.setitem(sys.modules, "sentence_transformers", module)
    folder = tmp_path / "all-MiniLM-L6-v2"  # the user's own fine-tuned copy, under the packaged model's name
    folder.mkdir()
    record = jf.make_encoder("text", "minilm", model=folder).provenance()
    assert record["weights"] == f"local sentence-transformers folder {folder}"
