from django.contrib import admin
from django.urls import path
from notes import views

urlpatterns = [
    path("admin/", admin.site.urls),
    path("notes", views.create_note),
    path("notes/async", views.create_note_async),
    path("notes/explode", views.explode),
    path("jobs/<int:job_id>", views.job_status),
    path("results/<str:result_id>", views.task_status),
]
