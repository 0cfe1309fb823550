# Hugging Face Docker Space: serves app.py on port 7860 as a non-root user (uid 1000).
FROM python:3.11-slim

# the PDF report's fonts for Chinese, Japanese and Korean names (Latin, Greek, Cyrillic: matplotlib's DejaVu)
RUN apt-get update && apt-get install -y --no-install-recommends fonts-droid-fallback fonts-nanum \
    && rm -rf /var/lib/apt/lists/*

RUN useradd --create-home --uid 1000 user
USER user
ENV HOME=/home/user \
    PATH=/home/user/.local/bin:$PATH \
    HF_HOME=/home/user/.cache/huggingface \
    GRADIO_TEMP_DIR=/home/user/.cache/gradio \
    GRADIO_SERVER_NAME=0.0.0.0 \
    GRADIO_SERVER_PORT=7860 \
    GRADIO_ANALYTICS_ENABLED=False \
    TF_CPP_MIN_LOG_LEVEL=2 \
    PYTHONUNBUFFERED=1
WORKDIR /home/user/app

COPY --chown=user requirements.txt .
RUN pip install --no-cache-dir --user -r requirements.txt && mkdir -p "$HF_HOME"

COPY --chown=user app.py ./
COPY --chown=user boneage_infer ./boneage_infer
COPY --chown=user weights ./weights
COPY --chown=user examples ./examples

EXPOSE 7860
CMD ["python", "app.py"]
