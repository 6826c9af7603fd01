"""README's parameter tables are generated from the configs (nbutils.docs): they cannot drift."""
from nbutils.docs import DOC_CONFIGS, README, render_parameter_blocks, stages_with_blocks


def test_every_stage_has_a_parameter_table_in_the_readme():
    assert sorted(stages_with_blocks(README.read_text())) == sorted(DOC_CONFIGS)


def test_readme_tables_equal_the_configs():
    text = README.read_text()
    assert render_parameter_blocks(text) == text, "README tables differ from the configs: run `python -m nbutils docs`"


def test_a_changed_default_shows_up_as_a_difference():
    text = README.read_text()
    stage = stages_with_blocks(text)[0]
    tampered = text.replace(f"<!-- params:{stage} -->\n", f"<!-- params:{stage} -->\n| stale row |\n", 1)
    assert render_parameter_blocks(tampered) == text
