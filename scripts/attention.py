"""Draw a checkpoint's attention on a prompt, and print every head's diagnostics:

    python scripts/attention.py ckpt=outputs/<date>/<time> prompt="To be, or not to be" out=attn.png

``layer=`` and ``head=`` pick one layer or head. Settings and defaults: configs/attention.yaml.
"""

import sys

import hydra
from omegaconf import DictConfig

from tinylm.cli import exit_on_error, resolved
from tinylm.sample import quote_prompt


@hydra.main(version_base="1.3", config_path="../configs", config_name="attention")
def main(cfg: DictConfig) -> None:
    from tinylm.attention.render import render_attention
    from tinylm.config import AttentionScriptConfig, parse_section

    print(exit_on_error(lambda: render_attention(parse_section(AttentionScriptConfig, resolved(cfg), ""))))


if __name__ == "__main__":
    sys.argv = [quote_prompt(arg) for arg in sys.argv]  # prompt= takes any text: commas, €, ...
    main()
