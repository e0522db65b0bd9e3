"""The runner takes callables, so any model (or a baseline) is evaluated the same way."""

from pathlib import Path

import torch

from training.data import CaptionDataset, VQADataset
from training.evaluation import evaluate_retrieval, evaluate_vqa, run_evaluation, write_results

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "m3d_mini"


def test_image_dependent_predictor_beats_its_blanked_self(tmp_path):
    vqa = VQADataset(FIXTURE, "M3D_VQA_test.csv", mode="closed")
    answers = {vqa.record(i)["question"]: vqa.record(i)["answer_choice"] for i in range(len(vqa))}

    def predict(image, prompt):
        # "sees" the image: answers right only when the image is not blank
        if float(image.abs().sum()) == 0:
            return "no idea"
        question = prompt.split(" Choices:")[0].strip()
        return f"{answers.get(question, 'A')}. something" if "Choices:" in prompt else "a cyst in the liver"

    captions = CaptionDataset(FIXTURE, "M3D_Cap.json", "train")
    results = run_evaluation(predict=predict, caption_dataset=captions, vqa_dataset=vqa, vqa_train_dataset=vqa,
                             metrics=("bleu1", "rouge1"))
    closed = results["vqa_closed"]
    assert closed["model"]["accuracy"]["overall"] == 1.0
    assert closed["blank image"]["accuracy"]["overall"] == 0.0
    assert results["report"]["model"]["rouge1"] > results["report"]["blank image"]["rouge1"]
    assert "answer_prior" in results and "vqa_open" in results
    json_path, md_path = write_results(results, tmp_path)
    assert json_path.exists() and "Closed VQA" in md_path.read_text()


def test_open_vqa_scores_per_category():
    vqa = VQADataset(FIXTURE, "M3D_VQA_test.csv", mode="open")
    out = evaluate_vqa(lambda image, prompt: "Liver", vqa, closed=False, metrics=("rouge1",))
    scores = out["metrics"]
    assert scores["Organ"]["rouge1"] == 1.0 and scores["Plane"]["rouge1"] == 0.0
    assert scores["overall"]["n"] == 4


def test_retrieval_with_perfect_embedders():
    captions = CaptionDataset(FIXTURE, "M3D_Cap.json", "train")
    texts = [captions.text(i) for i in range(len(captions))]

    def embed_images(images):
        # the two fixture volumes differ in where their bright voxels are
        return torch.stack([torch.tensor([float(im[0, 0, 0, 0] > 0), float(im[0, -1, -1, -1] > 0)]) for im in images])

    def embed_texts(batch):
        return torch.tensor([[1.0, 0.0] if t == texts[0] else [0.0, 1.0] for t in batch])

    out = evaluate_retrieval(embed_images, embed_texts, captions, sizes=(100,))
    assert out == {"N=2": {"IR@1": 1.0, "IR@5": 1.0, "IR@10": 1.0, "TR@1": 1.0, "TR@5": 1.0, "TR@10": 1.0}}
