# Image for the classroom "jupyter" service (see docker-compose.yml).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Non-root user. docker-compose.yml bind-mounts the repository at /workbook, so on Linux
# hosts the UID should match the owner of the checkout (override with JUPYTER_UID in .env).
ARG UID=1000
ARG GID=1000
RUN groupadd --gid "${GID}" workbook \
    && useradd --uid "${UID}" --gid "${GID}" --create-home --shell /bin/bash workbook \
    && install -d -o workbook -g workbook /workbook

WORKDIR /workbook

# Dependencies first, so this layer is cached until the lock file changes.
COPY requirements.lock pyproject.toml ./
RUN pip install --no-cache-dir -r requirements.lock

# Then the project itself, installed editable so the bind-mounted course_lib is what runs.
COPY --chown=workbook:workbook . .
RUN pip install --no-cache-dir --no-deps -e . \
    && find /workbook -maxdepth 1 -name '*.egg-info' -exec chown -R workbook:workbook {} +

USER workbook

EXPOSE 8888

# JUPYTER_TOKEN is read from the environment by jupyter itself.
CMD ["jupyter", "lab", "--ip=0.0.0.0", "--port=8888", "--no-browser", \
     "--ServerApp.root_dir=/workbook", \
     "--LabApp.default_url=/lab/tree/notebooks/00_start_here.ipynb"]
