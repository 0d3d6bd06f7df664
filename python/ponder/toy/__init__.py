"""The embedded default: a synthetic world in which every method runs offline on a CPU.

- :mod:`ponder.toy.arithmetic`: multi-step arithmetic problems with step-by-step solutions
  (steps separated by ``"\\n\\n"``, a final ``"Answer: N"``), a seeded train / validation / test
  split, a verifier, a step checker (PRM labels) and wrong solutions (negative examples);
- :mod:`ponder.toy.retrieval`: key-value lookup among distractors in 1K-8K-token contexts;
- :mod:`ponder.toy.retrieval_model`: a two-layer Llama that answers those lookups (tried up to
  8K tokens), constructed as an explicit lookup circuit (:func:`build_retrieval_model`), for ThinK;
  :mod:`ponder.toy.retrieval_train` trains the shipped one (``load_toy_model("retrieval")``)
  from its first layer;
- :mod:`ponder.toy.tokenizer`: a character tokenizer that transformers loads (needs transformers,
  imported only when it is built);
- :mod:`ponder.toy.models`: the shipped toy language models, a weaker ``"draft"`` and a stronger
  ``"target"`` (:func:`load_toy_model`), and their greedy accuracy (:func:`evaluate_accuracy`);
- :mod:`ponder.toy.train`: the training code that made them (:func:`train_all`);
- :mod:`ponder.toy.oracle`: judges that know the truth: :class:`ToyVerifier` (registered as
  ``ponder.rewards.get_verifier("toy")``) and :class:`ToyOracleScorer` (a step scorer for RSD);
- :mod:`ponder.toy.prm`: the toy process reward model, trained by ponder's PRM trainer
  (:func:`load_toy_prm` gives a ready :class:`ponder.rewards.ProcessRewardModel`).

    from ponder.toy import make_problems, split, verify
    train, validation, test = split(make_problems(10_000, seed=0))
    p = test[0]
    p.prompt, p.target     # "Q: 12+34-5=?\\n\\n", "12+34=46\\n\\n46-5=41\\n\\nAnswer: 41"
    verify(p, "12+34=46\\n\\n46-5=41\\n\\nAnswer: 41")  # True
"""

from .arithmetic import (
    ANSWER_PREFIX,
    CORRUPTIONS,
    OPERATORS,
    STEP_SEPARATOR,
    ArithmeticConfig,
    Problem,
    Splits,
    check_steps,
    corrupt,
    extract_answer,
    make_problems,
    parse_question,
    split,
    verify,
)
from .models import SPECS, ToyModelSpec, evaluate_accuracy, load_toy_model
from .oracle import ToyOracleScorer, ToyVerifier
from .prm import PRM_SPEC, load_toy_prm
from .retrieval import RetrievalExample, extract_value, make_retrieval, verify_retrieval
from .retrieval_model import build_retrieval_model, evaluate_retrieval
from .tokenizer import ALPHABET, SPECIAL_TOKENS, make_tokenizer

__all__ = [
    "ALPHABET",
    "ANSWER_PREFIX",
    "CORRUPTIONS",
    "OPERATORS",
    "PRM_SPEC",
    "SPECIAL_TOKENS",
    "SPECS",
    "STEP_SEPARATOR",
    "ArithmeticConfig",
    "Problem",
    "RetrievalExample",
    "Splits",
    "ToyModelSpec",
    "ToyOracleScorer",
    "ToyVerifier",
    "build_retrieval_model",
    "check_steps",
    "corrupt",
    "evaluate_accuracy",
    "evaluate_retrieval",
    "extract_answer",
    "extract_value",
    "load_toy_model",
    "load_toy_prm",
    "make_problems",
    "make_retrieval",
    "make_tokenizer",
    "parse_question",
    "split",
    "verify",
    "verify_retrieval",
]
