"""jtln_hf: the Joint Transfer Learning Network (Lu, Chen & Saidi, 2017) on the Hugging Face stack.

Importing the package registers the model with transformers' Auto classes, so ``AutoConfig``,
``AutoModelForImageClassification`` and ``AutoImageProcessor`` resolve ``model_type="jtln"``.
Without jtln_hf, a saved checkpoint loads with ``trust_remote_code=True``: the configuration,
modeling and image-processing files travel with it (``register_for_auto_class``).
"""

from transformers import AutoConfig, AutoImageProcessor, AutoModelForImageClassification

from .configuration_jtln import JointImageClassifierConfig
from .image_processing_jtln import JointImageClassifierImageProcessor
from .modeling_jtln import ClassPrediction, JointClassifierOutput, JointImageClassifier
from .version import __version__ as __version__  # the package version, `jtln_hf.__version__`

AutoConfig.register(JointImageClassifierConfig.model_type, JointImageClassifierConfig, exist_ok=True)
AutoModelForImageClassification.register(JointImageClassifierConfig, JointImageClassifier, exist_ok=True)
# one class for both of transformers' backends: it runs timm's transform on PIL images
_processors = {"torchvision": JointImageClassifierImageProcessor, "pil": JointImageClassifierImageProcessor}
AutoImageProcessor.register(JointImageClassifierConfig, image_processor_classes=_processors, exist_ok=True)

from .sharing import hub as _hub  # noqa: E402, F401  (`import jtln_hf` then `jtln_hf.sharing.hub.save_model_folder(...)`)

__all__ = [
    "JointImageClassifierConfig",
    "JointImageClassifier",
    "JointImageClassifierImageProcessor",
    "JointClassifierOutput",
    "ClassPrediction",
]
