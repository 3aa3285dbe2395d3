"""charlm: train character-level RNN language models, sample from them, look inside them."""

__version__ = "0.1.0"

from .checkpoint import latest_checkpoint, load_checkpoint, model_from_checkpoint, save_checkpoint  # noqa: E402
from .corpus import Corpus, open_corpus  # noqa: E402
from .evaluate import EvalResult, evaluate_tokens, token_losses  # noqa: E402
from .config import ModelConfig, TrainConfig  # noqa: E402
from .model import CharRNN  # noqa: E402
from .sample import generate, generate_batch  # noqa: E402
from .tokenizer import Tokenizer, train_tokenizer  # noqa: E402
from .train import Trainer, train  # noqa: E402

__all__ = [
    "CharRNN", "Corpus", "EvalResult", "ModelConfig", "Tokenizer", "TrainConfig", "Trainer", "evaluate_tokens",
    "generate", "generate_batch", "latest_checkpoint", "load_checkpoint", "model_from_checkpoint", "open_corpus",
    "save_checkpoint", "token_losses", "train", "train_tokenizer",
]
