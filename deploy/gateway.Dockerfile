# Hải Đăng gateway image: `haidang gateway` workers, and the CDSS app (`haidang serve`).
# The imaging service has its own image, built by BentoML (deploy/bentofile.yaml).
#
#   docker build -f deploy/gateway.Dockerfile -t haidang-gateway:0.1.0 .
#
# The whole source tree goes to /app and is installed in place: the knowledge base
# (datasets/knowledge, ddi-vn, ddi-ansm, icd10-vn, rxnorm) and the model registry (models/,
# with each model's intended-use gate) are read from it.
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    HAIDANG_CONFIG=/etc/haidang/haidang.toml

# fonts-dejavu-core: Vietnamese glyphs in the visual summary; dcmtk: echoscu/storescu for operators
RUN apt-get update \
 && apt-get install -y --no-install-recommends fonts-dejavu-core dcmtk \
 && rm -rf /var/lib/apt/lists/*

RUN useradd --system --uid 10001 --home-dir /app haidang
WORKDIR /app
COPY pyproject.toml README.md haidang.example.toml ./
COPY haidang ./haidang
COPY dicom_gateway ./dicom_gateway
COPY serving ./serving
COPY training ./training
COPY datasets/knowledge ./datasets/knowledge
COPY datasets/ddi-vn ./datasets/ddi-vn
COPY datasets/ddi-ansm ./datasets/ddi-ansm
COPY datasets/icd10-vn ./datasets/icd10-vn
COPY datasets/rxnorm ./datasets/rxnorm
COPY models ./models
# base install only: no torch (serving runs ONNX); editable so data paths resolve under /app
RUN pip install -e . \
 && mkdir -p /var/lib/haidang/spool /etc/haidang \
 && cp haidang.example.toml /etc/haidang/haidang.toml \
 && chown -R haidang /var/lib/haidang

USER haidang
# 11112: DICOM (C-ECHO, C-STORE); 3000: HTTP (CDSS app); 9100: gateway Prometheus metrics
EXPOSE 11112 3000 9100
ENTRYPOINT ["haidang"]
CMD ["gateway", "--metrics-port", "9100"]
