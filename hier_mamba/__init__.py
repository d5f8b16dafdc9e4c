"""hier_mamba: the Hierarchical Reasoning Model's H/L recurrence over Mamba stacks, for transformers.

Importing the package registers ``hier_mamba`` with AutoConfig, AutoModel, AutoModelForCausalLM and
AutoModelForTokenClassification (the ACT puzzle head).
"""

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForTokenClassification

from .act_stream import MissingLabelsError
from .cache import HierMambaCache
from .configuration import HierMambaConfig
from .modeling import HierMambaForCausalLM, HierMambaModel, HierMambaPreTrainedModel
from .modeling_act import HierMambaACTOutput, HierMambaForTokenClassification
from .optim import HierMambaTrainer, create_optimizer, optimizer_param_groups
from .tokenization import byte_tokenizer

AutoConfig.register(HierMambaConfig.model_type, HierMambaConfig, exist_ok=True)
AutoModel.register(HierMambaConfig, HierMambaModel, exist_ok=True)
AutoModelForCausalLM.register(HierMambaConfig, HierMambaForCausalLM, exist_ok=True)
AutoModelForTokenClassification.register(HierMambaConfig, HierMambaForTokenClassification, exist_ok=True)

__version__ = "0.1.0"
__all__ = [
    "HierMambaACTOutput",
    "HierMambaCache",
    "HierMambaConfig",
    "HierMambaForCausalLM",
    "HierMambaForTokenClassification",
    "HierMambaModel",
    "HierMambaPreTrainedModel",
    "HierMambaTrainer",
    "MissingLabelsError",
    "byte_tokenizer",
    "create_optimizer",
    "optimizer_param_groups",
]
