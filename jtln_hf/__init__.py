"""jtln_hf: the Joint Transfer Learning Network (Lu, Chen & Saidi, 2017) on the Hugging Face stack.

Importing the package registers the model with transformers' Auto classes, so
``AutoConfig`` / ``AutoModelForImageClassification`` resolve ``model_type="jtln"``.
"""

from transformers import AutoConfig, AutoModelForImageClassification

from .configuration_jtln import JointImageClassifierConfig
from .modeling_jtln import JointClassifierOutput, JointImageClassifier

AutoConfig.register(JointImageClassifierConfig.model_type, JointImageClassifierConfig, exist_ok=True)
AutoModelForImageClassification.register(JointImageClassifierConfig, JointImageClassifier, exist_ok=True)

__all__ = ["JointImageClassifierConfig", "JointImageClassifier", "JointClassifierOutput"]
__version__ = "0.1.0"
