"""The pins of requirements*.txt and environment.yml must agree."""

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def read_requirements(*names: str) -> list[str]:
    pins = []
    for name in names:
        for line in (ROOT / name).read_text().splitlines():
            requirement = line.split("#", 1)[0].strip()
            if requirement:
                pins.append(requirement)
    return pins


def test_environment_yml_matches_requirements():
    environment = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_sections = [entry["pip"] for entry in environment["dependencies"] if isinstance(entry, dict)]

    assert len(pip_sections) == 1
    assert sorted(pip_sections[0]) == sorted(read_requirements("requirements.txt", "requirements-test.txt"))


def test_requirements_pin_every_package_exactly():
    pins = read_requirements("requirements.txt", "requirements-test.txt")

    assert all("==" in pin for pin in pins), [pin for pin in pins if "==" not in pin]
    assert "torch==2.13.0" in pins
    assert not any(pin.lower().startswith("torchvision") for pin in pins)
