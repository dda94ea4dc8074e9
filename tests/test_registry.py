"""mlpbnn.registry: one registration style (names, duplicates, errors naming the valid names) and
config sections declared as dataclasses (defaults, types, checks naming config.SECTION.FIELD)."""

import dataclasses

import ml_collections
import pytest

from mlpbnn import data, models, tasks
from mlpbnn.estimators import REGISTRY as ESTIMATORS
from mlpbnn.registry import Registry, SectionError, from_section, section_dict


def test_registry_names_duplicates_and_errors():
    r: Registry[int] = Registry("widget")
    r.register("b", 2)

    @r("a")
    def a():
        return 1

    assert r.names() == ["a", "b"] and "a" in r and r.get("a") is a and r["b"] == 2
    r.register("b", 2)  # the same item again: a module imported twice
    with pytest.raises(ValueError, match="widget 'b' is already registered"):
        r.register("b", 3)
    with pytest.raises(ValueError, match="unknown widget 'c'; valid names: a, b"):
        r.get("c")


def test_every_kind_registers_where_it_is_defined():
    assert {"bireal_resnet18", "sbpn_resnet18", "bhrnet_w32", "resnet50"} <= set(models.names())
    assert set(data.names()) == {"coco", "digits", "fashion_mnist", "imagenet", "mpii", "pose_synthetic"}
    assert set(tasks.names()) >= {"classification", "keypoints"}
    assert not ESTIMATORS["classifier"].sign_forward and ESTIMATORS["mlp"].sign_forward
    assert models.info("sbpn_resnet18").head_class.__module__ == "mlpbnn.models.simple_baseline"
    assert data.DATASETS.get("coco").config.__module__ == "mlpbnn.data.coco"
    assert data.DATASETS.get("mpii").config.__module__ == "mlpbnn.data.mpii"


@dataclasses.dataclass(frozen=True)
class _Section:
    size: tuple[int, int] = (4, 3)
    rate: float = 0.5
    name: str = "x"
    count: int = 1
    flag: bool = False
    maybe: int | None = None

    def __post_init__(self):
        if self.count < 1:
            raise ValueError(f"count: must be >= 1, got {self.count}")


def test_sections_round_trip_with_types_and_named_errors():
    c = section_dict(_Section, count=2)
    assert isinstance(c, ml_collections.ConfigDict) and c.count == 2 and c.size == (4, 3)
    c.size = [8, 6]  # a list from the command line becomes a tuple; an int where a float is wanted a float
    c.rate = 1
    parsed = from_section(_Section, c, "thing")
    assert parsed == _Section(size=(8, 6), rate=1.0, count=2) and isinstance(parsed.rate, float)
    assert from_section(_Section, None, "thing") == _Section()
    assert from_section(_Section, {"maybe": 3}, "thing").maybe == 3
    for section, msg in (({"colour": 1}, r"config.thing.colour: not a field of this section; valid: size"),
                         ({"count": "2"}, r"config.thing.count: expected int, got '2'"),
                         ({"flag": 1}, r"config.thing.flag: expected bool, got 1"),
                         ({"size": (1, 2, 3)}, r"config.thing.size: expected 2 values"),
                         ({"count": 0}, r"config.thing.count: must be >= 1, got 0")):
        with pytest.raises(SectionError, match=msg):
            from_section(_Section, section, "thing")
    with pytest.raises(ValueError, match="has no field"):
        section_dict(_Section, colour=1)


def test_dataset_sections_are_the_configs_data():
    coco = data.section("coco")
    assert coco.name == "coco" and coco.workers == -1 and coco.image_size == (256, 192) and coco.eval_boxes == "gt"
    assert data.parse(coco) == data.DATASETS.get("coco").config()
    synthetic = data.parse(data.section("pose_synthetic", num_train=10))
    assert synthetic.num_train == 10 and synthetic.crop(3).heatmap_size == (64, 48)
    with pytest.raises(SectionError, match="config.data.name: 'cifar' is not valid; choose one of coco"):
        data.parse(ml_collections.ConfigDict({"name": "cifar"}))
